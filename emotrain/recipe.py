"""The training recipe: setup, train, save.

`run(cfg)` = `TrainingRecipe(cfg).setup()`, `.train()`, `.save()`:

- setup: every config group checked by the module that owns it, then one small `_setup_x` per
  config node (run and seed, precision, data, model, loss, optimizer and schedule, checkpoints),
  each building its piece with its owner's function, and (with `resume=PATH`) the restore.
- train: the loop, top to bottom in `_train()`: autocast forward -> fp32 loss -> scaled
  backward -> (every grad_accum_steps) unscale -> clip -> step -> scaler update -> scheduler
  step; evaluation every epoch (or every N steps), best-evaluation tracking, early stopping, a
  checkpoint after every evaluation. Data parallel lives behind `self.dp`
  (emotrain.distributed.DataParallel), which does nothing in a single process.
- save: test the kept weights, write metrics.json (emotrain.results.RunResult), the report and
  the slim model export.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from emotrain import distributed as ddp
from emotrain.checkpointing import check_resume_compatible, validate_checkpoint_config
from emotrain.config import check_config_keys, check_range, check_seed, choice
from emotrain.console import FILE_ONLY, final_lines, progress
from emotrain.data.cv import apply_cv, kfold_split, validate_cv_config
from emotrain.data.loading import load_data, validate_data_config
from emotrain.data.types import DataBundle, Split
from emotrain.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from emotrain.inference.predictions import PREDICTIONS_FILE, error_analysis, test_records, write_records
from emotrain.io import write_json
from emotrain.model_card import write_model_card
from emotrain.models.backbones import (
    backbone_dir,
    check_max_length,
    encoder_layers,
    load_tokenizer,
    validate_backbone_config,
)
from emotrain.models.embeddings import compact_word_embeddings
from emotrain.models.multitask import build_model
from emotrain.preprocessing import Preprocessor
from emotrain.reports import write_run_report
from emotrain.reproducibility import (
    git_info,
    library_versions,
    print_reproducibility_info,
    reproducibility_info,
    set_seed,
)
from emotrain.results import RunResult
from emotrain.rundir import remove_stale_temporaries, validate_paths_config
from emotrain.tracking import NullTracker, make_tracker
from emotrain.training.batching import EncodedSplit, encode_texts, make_loader
from emotrain.training.caches import FeatureCache, TokenCache, content_key, encoder_fingerprint, frozen_features
from emotrain.training.evaluation import EarlyStopping, evaluate
from emotrain.training.freeze import apply_freeze, validate_freeze, validate_freeze_config
from emotrain.training.losses import build_loss, validate_loss_config
from emotrain.training.metrics import evaluate_predictions, predict_labels
from emotrain.training.optim import build_optimizer, validate_optim_config
from emotrain.training.precision import MixedPrecisionTrainer, get_device, resolve_precision
from emotrain.training.schedulers import build_scheduler, validate_scheduler_config
from emotrain.training.thresholds import ThresholdPolicy
from emotrain.utils import is_better

log = logging.getLogger("emotrain")


# --------------------------------------------------------------------------- config checks


def validate_trainer_config(t) -> None:
    """trainer.* (this module's group): every numeric key within its documented range."""
    for key in (
        "epochs",
        "batch_size",
        "eval_batch_size",
        "grad_accum_steps",
        "log_every_steps",
        "max_nonfinite_steps",
    ):
        check_range(f"trainer.{key}", t[key], ge=1, integer=True)
    for key in ("max_steps", "eval_every_steps", "num_threads"):
        check_range(f"trainer.{key}", t[key], ge=1, integer=True, optional=True)
    check_range("trainer.max_grad_norm", t.max_grad_norm, gt=0, optional=True)
    check_range("trainer.dropout", t.dropout, ge=0, lt=1)
    check_range("trainer.early_stopping.patience", t.early_stopping.patience, ge=1, integer=True, optional=True)
    check_range("trainer.early_stopping.min_delta", t.early_stopping.min_delta, ge=0)
    check_range("trainer.threshold", t.threshold, gt=0, lt=1, optional=True)
    check_range("trainer.threshold_floor", t.threshold_floor, ge=0, lt=1)


def validate_config(cfg: DictConfig) -> None:
    """Every group checked by the module that owns it, before any data is read or model built."""
    check_config_keys(cfg)
    check_seed("seed", cfg.seed)
    validate_paths_config(cfg.paths)
    validate_data_config(cfg.data)
    validate_backbone_config(cfg.backbone)
    validate_freeze_config(cfg.freeze)
    validate_loss_config(cfg.loss)
    validate_scheduler_config(cfg.scheduler)
    validate_optim_config(cfg.optim)
    validate_trainer_config(cfg.trainer)
    validate_cv_config(cfg.cv)
    validate_checkpoint_config(cfg.checkpoint)


def monitor_keys(bundle: DataBundle, policy: ThresholdPolicy | None = None) -> list[str]:
    """The validation metrics trainer.monitor may name."""
    suffix = policy.suffix if policy is not None else None
    keys = ["loss", "macro_f1"]
    if suffix and any(t.multilabel for t in bundle.tasks):
        keys.append(f"macro_f1_{suffix}")
    for task in bundle.tasks:
        acc = "subset_accuracy" if task.multilabel else "accuracy"
        keys += [f"{task.name}/{m}" for m in ("loss", "macro_f1", "micro_f1", acc)]
        if task.multilabel and suffix:
            keys += [f"{task.name}/{m}_{suffix}" for m in ("macro_f1", "micro_f1", acc)]
    return keys


def check_monitor(monitor: str, bundle: DataBundle, policy: ThresholdPolicy) -> None:

    keys = monitor_keys(bundle, policy)
    if monitor not in keys:
        raise ConfigError(f"trainer.monitor={monitor}: unknown metric; choose one of {', '.join(keys)}")


# --------------------------------------------------------------------------- training state


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimiser steps taken
    best_value: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None  # the optimiser step of the best evaluation (one source of truth for "best")
    best_metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    lr_history: list[list[float]] = field(default_factory=list)  # [step, lr of the first param group]
    train_seconds: float = 0.0
    train_examples: int = 0
    nonfinite_steps: int = 0  # consecutive
    stopped_early: bool = False
    # Position inside an unfinished epoch (an `interrupted` checkpoint): batches done, running loss.
    epoch_batches_done: int = 0
    epoch_loss_sum: float = 0.0
    epoch_seen: int = 0


@contextlib.contextmanager
def stop_on_sigint(recipe: TrainingRecipe):
    """First Ctrl-C asks the loop to stop at the next optimiser step (and save); a second one kills."""

    def handler(signum, frame):
        if recipe.interrupt_requested:
            raise KeyboardInterrupt
        recipe.interrupt_requested = True
        log.warning(
            "Ctrl-C: saving a checkpoint at the next optimiser step (press Ctrl-C again to abort without saving)"
        )

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread (e.g. some launchers): keep the default behaviour
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def preprocess_bundle(bundle: DataBundle, pre: Preprocessor) -> DataBundle:
    def apply(split: Split | None) -> Split | None:
        if split is None:
            return None
        return Split(texts=pre.map(split.texts), targets=split.targets, name=split.name, ids=split.ids)

    bundle.train, bundle.val, bundle.test = apply(bundle.train), apply(bundle.val), apply(bundle.test)
    return bundle


# --------------------------------------------------------------------------- recipe


class TrainingRecipe:
    def __init__(self, cfg: DictConfig, overrides: list[str] | None = None):
        self.cfg = cfg
        self.overrides = list(overrides or [])
        self.started = time.time()
        self.resumed_from: str | None = None
        self.interrupt_requested = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> TrainingRecipe:
        cfg = self.cfg
        validate_config(cfg)
        check_max_length(cfg.backbone, Path(cfg.paths.root_dir))
        self._setup_run(cfg)
        self._setup_precision(cfg.precision)
        self._setup_data(cfg.data)
        self._setup_model(cfg.backbone)
        self._setup_loss(cfg.loss)
        self._setup_optimizer(cfg.optim, cfg.scheduler)
        self.mp = MixedPrecisionTrainer(self.device, self.mp_precision)
        self.monitor, self.mode = cfg.trainer.monitor, choice(cfg.trainer.monitor_mode)
        self.stopper = EarlyStopping(
            cfg.trainer.early_stopping.patience, cfg.trainer.early_stopping.min_delta, self.mode
        )
        self.state = TrainState()
        self.best_weights = copy.deepcopy(self.model.state_dict())
        self.resolved_config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        self._setup_checkpoints(cfg.checkpoint)
        if cfg.resume:
            self._resume(cfg.resume)
        self.tracker.log_params(self.resolved_config)
        log.info(
            "model=%s params=%d batch=%d x accum %d x processes %d = effective batch %d; %d optimiser steps",
            cfg.backbone.name,
            self.num_parameters,
            cfg.trainer.batch_size,
            self.accum,
            self.dp.world_size,
            self.effective_batch_size,
            self.total_steps,
            extra=FILE_ONLY,
        )
        self._log_banner()
        return self

    def _setup_run(self, cfg: DictConfig) -> None:
        """Data parallel (torchrun; nothing in one process), the run directory, the tracker, threads, seeds."""
        self.dp = ddp.DataParallel(ddp.init_distributed())
        self.is_main = self.dp.is_main  # only rank 0 writes
        self.show_progress = bool(cfg.trainer.progress) and self.is_main
        self.out_dir, self.root_dir = Path(cfg.paths.output_dir), Path(cfg.paths.root_dir)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        # First, so a missing extra or an unusable store fails before data is read; run() closes it on errors.
        self.tracker = (
            make_tracker(cfg.logger, cfg.logger.get("run_name") or self.out_dir.name, self.out_dir)
            if self.is_main
            else NullTracker()
        )
        if cfg.trainer.num_threads:
            torch.set_num_threads(cfg.trainer.num_threads)
        set_seed(cfg.seed, cfg.deterministic)
        print_reproducibility_info(cfg.seed, cfg.deterministic)

    def _setup_precision(self, precision_cfg) -> None:
        self.device = (
            self.dp.info.device if self.dp.world_size > 1 else get_device()[0]
        )  # cuda:LOCAL_RANK (NCCL) or cpu (gloo)
        self.requested_precision = choice(precision_cfg.mode)
        self.mp_precision, warning = resolve_precision(self.requested_precision, self.device)
        if warning:
            log.warning(warning)
        log.info(
            "device=%s precision=%s (requested %s)",
            self.device.type,
            self.mp_precision,
            self.requested_precision,
            extra=FILE_ONLY,
        )

    def _setup_data(self, data_cfg) -> None:
        """Load, fold (cv), preprocess and tokenise (once, cached) every split."""
        bundle = load_data(data_cfg, self.root_dir)
        self.cv_split = kfold_split(bundle, self.cfg.cv)  # None for holdout
        bundle = apply_cv(bundle, self.cfg.cv, self.cv_split)
        if self.cv_split is not None and self.is_main:
            write_json(self.out_dir / "cv_split.json", self.cv_split)  # held-out row indices into the pool
        self.thresholds = ThresholdPolicy.from_config(self.cfg.trainer)
        check_monitor(self.cfg.trainer.monitor, bundle, self.thresholds)
        self.preprocessor = Preprocessor.from_config(data_cfg.preprocess)
        self.bundle = bundle = preprocess_bundle(bundle, self.preprocessor)
        self.tasks = bundle.tasks
        log.info(
            "data=%s tasks=%s train=%d val=%d test=%d",
            data_cfg.kind,
            ", ".join(f"{t.name}({t.num_labels}{', multi-label' if t.multilabel else ''})" for t in bundle.tasks),
            len(bundle.train),
            len(bundle.val),
            len(bundle.test) if bundle.test is not None else 0,
            extra=FILE_ONLY,
        )
        self.tokenizer = load_tokenizer(self.cfg.backbone, self.root_dir)
        special = self.tokenizer.num_special_tokens_to_add(pair=False)
        if self.cfg.backbone.max_length <= special:  # the model would see only [CLS] [SEP]: no text at all
            raise ConfigError(
                f"backbone.max_length={self.cfg.backbone.max_length}: the backbone adds {special} special tokens, so "
                f"no text would remain; use at least {special + 1} (typically 64-512)"
            )
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        token_cache = TokenCache(self.cfg.paths.cache_dir if self.cfg.trainer.token_cache else None)
        started = time.perf_counter()
        splits = [
            (name, split)
            for name, split in (("train", bundle.train), ("val", bundle.val), ("test", bundle.test))
            if split is not None
        ]
        bar = progress(
            desc="tokenising", total=sum(len(s) for _, s in splits), unit="texts", enabled=self.show_progress
        )
        encode = functools.partial(encode_texts, on_chunk=bar.update)
        with ddp.main_process_first():  # data parallel: rank 0 fills the token cache, the others read it
            self.encoded = {
                name: EncodedSplit(
                    token_cache.encode(self.tokenizer, split.texts, self.cfg.backbone.max_length, encode), split.targets
                )
                for name, split in splits
            }
        bar.close()
        log.info(
            "tokenised %d texts in %.2fs",
            sum(len(d) for d in self.encoded.values()),
            time.perf_counter() - started,
            extra=FILE_ONLY,
        )
        self.train_data, self.val_data, self.test_data = (
            self.encoded["train"],
            self.encoded["val"],
            self.encoded.get("test"),
        )

    def _setup_model(self, backbone_cfg) -> None:
        """The encoder with one head per task, compact word embeddings, and (freeze=full) the cached frozen features."""
        cfg = self.cfg
        self.model = build_model(
            backbone_cfg,
            self.tasks,
            vocab_size=len(self.tokenizer),
            dropout=cfg.trainer.dropout,
            root_dir=self.root_dir,
            device=self.device,
        )
        log.info("encoder attention: %s", self.model.encoder.config._attn_implementation, extra=FILE_ONLY)
        validate_freeze(cfg.freeze, len(encoder_layers(self.model.encoder)))
        self.num_parameters = sum(p.numel() for p in self.model.parameters())
        self.frozen_encoder = choice(cfg.freeze.mode) == "full"
        # Other freeze modes never train the embeddings: nothing to save there.
        self.compact_embedding = None
        if cfg.trainer.compact_embeddings and choice(cfg.freeze.mode) == "none":
            self.compact_embedding = compact_word_embeddings(self.model.encoder, self.train_data.input_ids)
        self.features = None
        if self.frozen_encoder and cfg.freeze.feature_cache:
            key = content_key(
                "features-v1",
                encoder_fingerprint(self.model),
                backbone_cfg.max_length,
                choice(backbone_cfg.pooling),
                self.mp_precision,
                sorted(self.preprocessor.to_dict().items()),
            )
            texts = {name: getattr(self.bundle, name).texts for name in self.encoded}
            with ddp.main_process_first():  # data parallel: rank 0 fills the feature cache, the others read it
                self.features = frozen_features(
                    self.model,
                    self.encoded,
                    texts,
                    FeatureCache(cfg.paths.cache_dir, key),
                    pad_id=self.pad_id,
                    batch_size=cfg.trainer.eval_batch_size,
                    mp=MixedPrecisionTrainer(self.device, self.mp_precision),
                    device=self.device,
                    show_progress=self.show_progress,
                )
        # What loading the kept model needs, stored in every checkpoint (no reader goes back to config key paths).
        self.model_info = {
            "max_length": int(backbone_cfg.max_length),
            "preprocess": self.preprocessor.to_dict(),
            "primary_task": self.bundle.primary_task,
            "backbone": backbone_cfg.name,
            "tokenizer_dir": str(backbone_dir(backbone_cfg, self.root_dir)),
        }

    def _setup_loss(self, loss_cfg) -> None:
        self.criterion = build_loss(
            loss_cfg, self.tasks, self.bundle.train.targets, len(self.bundle.train), self.device
        )

    def _setup_optimizer(self, optim_cfg, scheduler_cfg) -> None:
        """AdamW over the model and the learned task weights; batches; the lr schedule over the optimiser steps."""
        t = self.cfg.trainer
        self.optimizer = build_optimizer(self.model, optim_cfg, list(self.criterion.parameters()), self.device)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if self.compact_embedding is not None:
            self.compact_embedding.follow_weight_decay(self.optimizer)
        self.accum = t.grad_accum_steps
        self.effective_batch_size = t.batch_size * self.accum * self.dp.world_size  # trainer.batch_size is per process
        self.train_loader = make_loader(
            self.train_data,
            self.pad_id,
            t.batch_size,
            shuffle=True,
            group_by_length=t.length_grouping,
            seed=self.cfg.seed,
            rank=self.dp.rank,
            world_size=self.dp.world_size,
        )
        self.total_steps = math.ceil(len(self.train_loader) / self.accum) * t.epochs
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)
        self.scheduler = build_scheduler(self.optimizer, scheduler_cfg, self.total_steps)

    def _setup_checkpoints(self, checkpoint_cfg) -> None:
        self.checkpoints = None
        if checkpoint_cfg.enabled and self.is_main:  # data parallel: only rank 0 writes checkpoints
            from emotrain.training.checkpoints import CheckpointManager

            self.checkpoints = CheckpointManager(
                self.out_dir, checkpoint_cfg.prefix, checkpoint_cfg.save_top_k, self.monitor, self.mode
            )

    def _resume(self, path: str) -> None:
        from emotrain.checkpointing import load_checkpoint, resolve_checkpoint

        given = Path(path) if Path(path).is_absolute() else self.root_dir / path
        ckpt_path = resolve_checkpoint(given, which="last")
        if self.is_main and ckpt_path.parent.name == "checkpoints":
            # What a kill during a write left behind in the resumed run (unless a process still runs there).
            remove_stale_temporaries(ckpt_path.parent.parent)
        meta = load_checkpoint(ckpt_path)  # metadata first: refuse shape changes before touching the model
        changed = check_resume_compatible(
            meta["hyperparameters"], self.resolved_config, meta["tasks"], [t.to_dict() for t in self.tasks]
        )
        if changed:
            log.warning("resume: config differs from the checkpoint's in %s", ", ".join(changed))
        load_checkpoint(ckpt_path, self.model, self.optimizer, self.scheduler, self.mp, restore_rng=True)
        extra = meta.get("extra") or {}
        for key, value in (extra.get("state") or {}).items():
            setattr(self.state, key, value)
        self.stopper.load_state_dict(extra.get("early_stopping") or {"best": None, "bad_evals": 0})
        if extra.get("criterion"):
            self.criterion.load_state_dict(extra["criterion"])
        self.best_weights = copy.deepcopy(self.model.state_dict())
        best = resolve_checkpoint(ckpt_path.parent, which="best") if (ckpt_path.parent / "best.json").exists() else None
        if best is not None and best != ckpt_path:
            self.best_weights = load_checkpoint(best)["model"]
        self.resumed_from = str(ckpt_path)
        log.info(
            "resumed from %s (epoch %d, step %d)", ckpt_path, self.state.epoch, self.state.global_step, extra=FILE_ONLY
        )

    def _log_banner(self) -> None:
        """The start of the run on the console, in a few lines; the details are in emotrain.log and metrics.json."""
        cfg, b = self.cfg, self.bundle
        tasks = ", ".join(
            f"{t.name} ({t.num_labels} {'labels, multi-label' if t.multilabel else 'classes'})" for t in self.tasks
        )
        sizes = f"train {len(b.train)}, val {len(b.val)}, test {len(b.test) if b.test is not None else 0}"
        processes = f", {self.dp.world_size} processes" if self.dp.world_size > 1 else ""
        lines = [
            f"run directory: {self.out_dir}",
            f"data: {cfg.data.kind} ({sizes}); tasks: {tasks}",
            f"model: {cfg.backbone.name}, {self.num_parameters / 1e6:.1f}M parameters "
            f"({choice(cfg.backbone.pooling)} pooling, max_length {cfg.backbone.max_length})",
            f"device: {self.device.type}, precision {self.mp_precision} (requested {self.requested_precision}), "
            f"{torch.get_num_threads()} threads{processes}",
            f"training: {cfg.trainer.epochs} epochs, {self.total_steps} optimiser steps, batch "
            f"{self.effective_batch_size}; "
            f"best epoch by val {self.monitor} ({self.mode}); seed {cfg.seed}",
        ]
        if self.resumed_from:
            lines.append(f"resumed from: {self.resumed_from} (epoch {self.state.epoch}, step {self.state.global_step})")
        for line in lines:
            log.info("%s", line)

    # ------------------------------------------------------------------ train
    def evaluate(self, data, thresholds=None):
        name = next(
            name
            for name, d in (("train", self.train_data), ("val", self.val_data), ("test", self.test_data))
            if d is data
        )
        return evaluate(
            self.model,
            self.criterion,
            data,
            self.tasks,
            pad_token_id=self.pad_id,
            batch_size=self.cfg.trainer.eval_batch_size,
            device=self.device,
            mp=self.mp,
            thresholds=thresholds,
            features=self.features[name] if self.features is not None else None,
            rank=self.dp.rank,
            world_size=self.dp.world_size,
            progress_desc=f"evaluating {'validation' if name == 'val' else name} split" if self.show_progress else None,
        )

    def train(self) -> TrainingRecipe:
        with stop_on_sigint(self):
            return self._train()

    def _train(self) -> TrainingRecipe:
        cfg, state, dp = self.cfg, self.state, self.dp
        model, criterion, optimizer, scheduler = self.model, self.criterion, self.optimizer, self.scheduler
        accum, device, sampler, steps = self.accum, self.device, self.train_loader.batch_sampler, len(self.train_loader)
        # One bar per epoch (below); each epoch ends with its log line, so an outer "epochs" bar adds only clutter.
        epochs = range(state.epoch, cfg.trainer.epochs)
        stop = state.stopped_early or self._reached_max_steps()
        for epoch in epochs:
            if stop:
                break
            self.trainable = apply_freeze(model, cfg.freeze, epoch)
            log.info("epoch %d: %d trainable parameters", epoch + 1, self.trainable, extra=FILE_ONLY)
            train_model = dp.wrap(
                model
            )  # the forward runs through DDP under torchrun; everything else uses the bare model
            self._train_mode()
            # After an `interrupted` checkpoint: skip the batches this epoch already trained on.
            done, state.epoch_batches_done = state.epoch_batches_done, 0
            sampler.set_epoch(epoch, skip=done)
            shares = sampler.shares()  # (this rank's examples, global batch examples) per batch
            loss_sum, seen = dp.running_sums(state.epoch_loss_sum, state.epoch_seen, device)
            if done == 0:
                dp.seed_epoch(cfg.seed, epoch)
            epoch_started = time.perf_counter()
            batches = progress(
                self.train_loader,
                desc=f"epoch {epoch + 1}/{cfg.trainer.epochs}",
                initial=done,
                total=steps,
                unit="batches",
                enabled=self.show_progress,
            )
            for i, batch in enumerate(batches, start=done):
                ids = batch["input_ids"].to(device, non_blocking=True)
                mask = batch["attention_mask"].to(device, non_blocking=True)
                targets = {k: v.to(device, non_blocking=True) for k, v in batch["targets"].items()}
                pooled = None
                if self.features is not None:  # frozen encoder: heads train on cached features
                    pooled = torch.from_numpy(self.features["train"][batch["indices"].numpy()]).to(
                        device, non_blocking=True
                    )
                n_local, n_global = shares[i]  # n_local = 0: a padding example (this rank's share was empty)
                step_now = (i + 1) % accum == 0 or i + 1 == steps
                with dp.no_sync(train_model, sync=step_now):  # gradients all-reduced only at the optimiser step
                    with self.mp.autocast():
                        logits = train_model(ids, mask, pooled=pooled)
                    loss, _ = criterion(logits, targets)  # in fp32: the loss module upcasts logits
                    if dp.any(not torch.isfinite(loss), device):
                        self._nonfinite_loss(epoch)
                        continue
                    state.nonfinite_steps = 0
                    self.mp.scale_loss(dp.share_of_batch(loss, n_local, n_global) / accum).backward()
                loss_sum += loss.detach() * n_local
                seen += n_local

                if step_now:
                    dp.average_grads(criterion.parameters())  # learned task weights live outside DDP
                    self.mp.step(optimizer, self.params, cfg.trainer.max_grad_norm)  # unscale -> clip -> step
                    self.mp.update()  # loss-scale update; counts steps the scaler skipped
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.global_step += 1
                    state.lr_history.append([state.global_step, scheduler.get_last_lr()[0]])
                    if state.global_step % cfg.trainer.log_every_steps == 0:
                        total, count = dp.sum(loss_sum, seen)
                        log.info(
                            "step %d: lr=%.3e running train_loss=%.4f",
                            state.global_step,
                            scheduler.get_last_lr()[0],
                            total / max(count, 1),
                            extra=FILE_ONLY,
                        )
                    if cfg.trainer.eval_every_steps and state.global_step % cfg.trainer.eval_every_steps == 0:
                        total, count = dp.sum(loss_sum, seen)
                        stop = self._evaluate_and_checkpoint(total / max(count, 1), epoch_done=False)
                        self._train_mode()
                    if dp.any(self.interrupt_requested, device):
                        total, count = dp.sum(loss_sum, seen)
                        self._save_interrupted(epoch, i + 1, total, count, time.perf_counter() - epoch_started)
                    if stop or self._reached_max_steps():
                        break

            state.epoch = epoch + 1
            state.epoch_loss_sum, state.epoch_seen = 0.0, 0
            state.train_seconds += time.perf_counter() - epoch_started
            total, seen = dp.sum(loss_sum, seen)
            state.train_examples += seen
            train_loss = total / max(seen, 1)
            stop = self._evaluate_and_checkpoint(train_loss, epoch_done=True) or stop
            if stop:
                state.stopped_early = True
                log.info(
                    "early stopping after epoch %d (no %s improvement for %d evaluations)",
                    state.epoch,
                    self.monitor,
                    self.stopper.patience,
                )
            elif self._reached_max_steps():
                log.info("reached trainer.max_steps=%d", cfg.trainer.max_steps)
                stop = True
        return self

    def _train_mode(self) -> None:
        self.model.train()
        if self.frozen_encoder:
            self.model.encoder.eval()  # a frozen encoder runs without dropout, as its cached features do

    def _reached_max_steps(self) -> bool:
        return bool(self.cfg.trainer.max_steps and self.state.global_step >= self.cfg.trainer.max_steps)

    def _save_interrupted(self, epoch: int, batches_done: int, loss_sum: float, seen: int, seconds: float) -> None:
        """Save the exact mid-epoch position (weights, optimiser, RNG, batch index) and stop."""
        from emotrain.checkpointing import save_checkpoint

        state = self.state
        state.epoch_batches_done, state.epoch_loss_sum, state.epoch_seen = batches_done, loss_sum, seen
        state.train_seconds += seconds
        last_val = state.history[-1]["val"] if state.history else {}
        path = None
        if self.is_main:  # data parallel: rank 0 writes; the others wait for its path (so none exits mid-write)
            path = save_checkpoint(
                self.model,
                self.optimizer,
                self.scheduler,
                epoch,
                last_val.get("loss"),
                last_val,
                self.resolved_config,
                self.out_dir,
                f"{self.cfg.checkpoint.prefix}_interrupted",
                global_step=state.global_step,
                scaler_state=self.mp.state_dict(),
                tasks=[t.to_dict() for t in self.tasks],
                extra=self._checkpoint_extra(),
                model_info=self.model_info,
            )
        path = ddp.broadcast_object(path)
        command = ddp.resume_command(self.overrides, path, self.dp.info)
        raise TrainingInterrupted(
            f"interrupted at epoch {epoch + 1}, step {state.global_step}; saved {path}; resume with: {command}", path
        )

    def _checkpoint_extra(self) -> dict:
        return {
            "state": asdict(self.state),
            "early_stopping": self.stopper.state_dict(),
            "criterion": self.criterion.state_dict(),
            "preprocessing": self.preprocessor.to_dict(),
            "primary_task": self.bundle.primary_task,
        }

    def _nonfinite_loss(self, epoch: int) -> None:
        """Skip the step; auto-bf16 falls back to fp32; too many in a row stops training."""
        self.state.nonfinite_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.requested_precision == "auto" and self.mp.precision == "bf16":
            # auto picked bf16 for speed; it must not cost a finite loss.
            log.warning(
                "non-finite loss under bf16 autocast at step %d; precision=auto falls back to fp32",
                self.state.global_step,
            )
            self.mp = MixedPrecisionTrainer(self.device, "fp32")
        elif self.state.nonfinite_steps >= self.cfg.trainer.max_nonfinite_steps:
            last = self.checkpoints.last_path if self.checkpoints is not None else None
            kept = (
                f"the last good checkpoint is {last} (resume={last.parent.parent} continues from it)"
                if last
                else "no checkpoint was saved before"
            )
            raise TrainingDiverged(
                f"loss was non-finite for {self.state.nonfinite_steps} consecutive steps in epoch {epoch + 1}: "
                f"lower optim.lr, set trainer.max_grad_norm, or use precision=fp32; {kept}; metrics.json has the "
                "results so far"
            )

    def _evaluate_and_checkpoint(self, train_loss: float, epoch_done: bool) -> bool:
        """Evaluate on val, track the best weights, save a checkpoint; True when early stopping says stop."""
        state = self.state
        if (
            epoch_done
            and state.history
            and state.history[-1]["step"] == state.global_step
            and not state.history[-1].get("epoch_done")
        ):
            # eval_every_steps just evaluated this exact step: reuse it, mark the epoch end.
            state.history[-1].update(train_loss=train_loss, epoch=state.epoch, epoch_done=True)
            return False
        metrics, _, probs = self.evaluate(self.val_data)
        metrics.update(self.thresholds.decision_metrics(self.tasks, probs, self.val_data.targets, metrics))
        state.history.append(
            {
                "epoch": state.epoch,
                "epoch_done": epoch_done,
                "step": state.global_step,
                "train_loss": train_loss,
                "val": metrics,
                "lr": self.scheduler.get_last_lr()[0],
                "trainable_params": self.trainable,
                "task_weights": self.criterion.task_weights(),
            }
        )
        value = metrics[self.monitor]
        if is_better(value, state.best_value, self.mode):
            state.best_value, state.best_epoch, state.best_step, state.best_metrics = (
                value,
                state.epoch,
                state.global_step,
                metrics,
            )
            self.best_weights = copy.deepcopy(self.model.state_dict())
        stop = self.stopper.step(value)
        weights = self.criterion.task_weights()
        self.tracker.log_metrics(
            {
                "train_loss": train_loss,
                **{f"val/{k}": v for k, v in metrics.items()},
                **{f"task_weight/{k}": v for k, v in weights.items()},
            },
            step=state.global_step,
        )
        self._log_evaluation(train_loss, metrics, value, epoch_done)
        if self.criterion.uncertainty:
            log.info("learned task weights: %s", ", ".join(f"{k}={v:.3f}" for k, v in weights.items()))
        if self.checkpoints is not None:
            self.checkpoints.save(
                self.model,
                self.optimizer,
                self.scheduler,
                state.epoch,
                metrics["loss"],
                metrics,
                self.resolved_config,
                value,
                global_step=state.global_step,
                scaler_state=self.mp.state_dict(),
                tasks=[t.to_dict() for t in self.tasks],
                extra=self._checkpoint_extra(),
                model_info=self.model_info,
            )
        return stop

    def _decisions(self) -> dict:
        """How the kept model turns scores into labels: thresholds for multi-label tasks; single-label tasks take
        the most probable class (argmax), so a run without multi-label tasks has nothing tuned."""
        multilabel = [t.name for t in self.tasks if t.multilabel]
        if not multilabel:
            return {"policy": "argmax", "description": "the most probable class of each task", "applies_to": []}
        return {
            "policy": self.thresholds.suffix or "0.5",
            "description": self.thresholds.description,
            "applies_to": multilabel,
        }

    def _log_evaluation(self, train_loss: float, metrics: dict, value: float, epoch_done: bool) -> None:
        state, suffix = self.state, self.thresholds.suffix
        decided = (
            f", macro-F1 at {suffix} thresholds {metrics[f'macro_f1_{suffix}']:.4f}"
            if f"macro_f1_{suffix}" in metrics
            else ""
        )
        where = (
            f"epoch {state.epoch}/{self.cfg.trainer.epochs}"
            if epoch_done
            else f"step {state.global_step} (epoch {state.epoch + 1})"
        )
        # The monitored value is repeated only when it is not the val loss already on the line.
        best = f"{state.best_value:.4f} @ epoch {state.best_epoch}"
        if self.monitor == "loss":
            monitored = f" | best val loss: {best}"
        else:
            monitored = f" | val {self.monitor} {value:.4f} (best {best})"
        log.info(
            "%s: train loss %.4f | val loss %.4f, macro-F1 %.4f%s%s%s",
            where,
            train_loss,
            metrics["loss"],
            metrics["macro_f1"],
            " at 0.5" if decided else "",
            decided,
            monitored,
        )

    # ------------------------------------------------------------------ save
    def decision_thresholds(self) -> dict[str, list[float]]:
        """Per-label thresholds for multi-label tasks, from the best weights' validation probabilities."""
        if not any(task.multilabel for task in self.tasks):
            return {}
        probs = self.evaluate(self.val_data)[2] if self.thresholds.needs_probabilities else {}
        return self.thresholds.thresholds(self.tasks, probs, self.val_data.targets)

    def _test(self, thresholds: dict, run: bool) -> tuple[dict, dict, dict, dict, list]:
        """Test metrics of the loaded weights: at `thresholds`, the same probabilities at 0.5, per class, the
        confusion matrices' inputs, and one prediction record per test text (emotrain.inference.predictions)."""
        if self.test_data is None or not run:
            return {}, {}, {}, {}, []
        metrics, per_class, probs = self.evaluate(self.test_data, thresholds=thresholds)
        split = self.bundle.test
        records = test_records(
            self.tasks,
            self.bundle.primary_task,
            ids=[split.row_id(i) for i in range(len(split))],
            texts=split.texts,
            targets=split.targets,
            probs=probs,
            decisions={t.name: predict_labels(t, probs[t.name], thresholds.get(t.name)) for t in self.tasks},
        )
        at_05 = {}
        if thresholds:  # the same probabilities decided at 0.5: no second pass over the test split
            losses = {t.name: metrics[f"{t.name}/loss"] for t in self.tasks}
            at_05, _ = evaluate_predictions(self.tasks, probs, self.test_data.targets, losses, metrics["loss"])
        confusion = {
            t.name: {
                "labels": list(t.labels),
                "y_true": self.test_data.targets[t.name].tolist(),
                "y_pred": probs[t.name].argmax(-1).tolist(),
            }
            for t in self.tasks
            if not t.multilabel
        }
        log.info(
            "test (best epoch %s): loss=%.4f macro_f1=%.4f %s",
            self.state.best_epoch,
            metrics["loss"],
            metrics["macro_f1"],
            " ".join(f"{t.name}/macro_f1={metrics[f'{t.name}/macro_f1']:.4f}" for t in self.tasks),
            extra=FILE_ONLY,
        )
        if thresholds:
            log.info(
                "test macro_f1 at 0.5 thresholds: %s",
                " ".join(f"{t}={at_05[f'{t}/macro_f1']:.4f}" for t in thresholds),
                extra=FILE_ONLY,
            )
        return metrics, at_05, per_class, confusion, records

    def save(self, status: str = "completed", error: str | None = None) -> dict:
        """Test the best weights; write metrics.json, the report and the export.

        status="diverged" (run() after TrainingDiverged): the results so far, with `error`; no export, tracker
        left open.
        """
        cfg, state = self.cfg, self.state
        self.model.load_state_dict(self.best_weights)
        thresholds = self.decision_thresholds()
        if thresholds and self.checkpoints is not None and self.checkpoints.best_path is not None:
            from emotrain.checkpointing import update_checkpoint_extra

            # The thresholds belong to the best weights: store them with that checkpoint too.
            update_checkpoint_extra(self.checkpoints.best_path, {"thresholds": thresholds})
        test, test_at_05, per_class, confusion, records = self._test(
            thresholds, run=status == "completed" or bool(state.history)
        )
        result = RunResult(
            status=status,
            error=error,
            objective={"metric": self.monitor, "mode": self.mode, "split": "val", "value": state.best_value},
            best={
                "epoch": state.best_epoch,
                "step": state.best_step,
                "metric": self.monitor,
                "mode": self.mode,
                "value": state.best_value,
                "split": "val",
            },
            decisions=self._decisions(),
            best_epoch=state.best_epoch,
            epochs_run=state.epoch,
            global_steps=state.global_step,
            stopped_early=state.stopped_early,
            best_val=state.best_metrics,
            final_val=state.history[-1]["val"] if state.history else {},
            test=test,
            test_at_05=test_at_05,
            test_per_class=per_class,
            thresholds=thresholds,
            history=state.history,
            lr_per_step=state.lr_history,
            wall_time_s=round(time.time() - self.started, 3),
            train_samples_per_s=round(state.train_examples / max(state.train_seconds, 1e-9), 2),
            device=self.device.type,
            precision={
                "requested": self.requested_precision,
                "effective": self.mp.precision,
                "skipped_steps": self.mp.skipped_steps,
            },
            seed=cfg.seed,
            deterministic=cfg.deterministic,
            overrides=self.overrides,
            resumed_from=self.resumed_from,
            tasks=[t.to_dict() for t in self.tasks],
            primary_task=self.bundle.primary_task,
            data_sizes={
                "train": len(self.bundle.train),
                "val": len(self.bundle.val),
                "test": len(self.bundle.test) if self.bundle.test is not None else 0,
            },
            effective_batch_size=self.effective_batch_size,
            world_size=self.dp.world_size,
            reproducibility=reproducibility_info(cfg.seed, cfg.deterministic),
            git=git_info(),
            versions=library_versions(),
            config=self.resolved_config,
        )
        if (
            status == "completed"
            and self.checkpoints is not None
            and cfg.checkpoint.export
            and self.checkpoints.best_path is not None
        ):
            from emotrain.inference.model_dir import export_model

            model_dir = export_model(
                self.checkpoints.best_path, self.out_dir / "model", self.tokenizer, thresholds=thresholds
            )
            result.model_dir = str(model_dir)
            write_model_card(model_dir, result)
        results = result.to_dict()
        errors = error_analysis(records, self.tasks) if records else None
        if records and self.is_main:
            write_records(self.out_dir / PREDICTIONS_FILE, records)
        if cfg.report and self.is_main:  # data parallel: only rank 0 writes (self.checkpoints is None elsewhere)
            write_run_report(
                results,
                self.out_dir / "report",
                cfg.checkpoint.prefix,
                per_class=per_class,
                confusion=confusion,
                errors=errors,
            )
        if self.is_main:
            result.write(self.out_dir)
            log.info("wrote %s (%.1fs)", self.out_dir / "metrics.json", result.wall_time_s, extra=FILE_ONLY)
            for line in final_lines(results, self.out_dir):
                log.info("%s", line)
        self.tracker.log_metrics({f"test/{k}": v for k, v in results["test"].items()}, step=state.global_step)
        self.tracker.log_artifacts(self.out_dir)
        if status == "completed":
            self.tracker.close()  # otherwise run() closes it as FAILED
        return results


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Train and evaluate one model. Returns the metrics written to metrics.json."""
    recipe = TrainingRecipe(cfg, overrides)
    try:
        recipe.setup()
        try:
            recipe.train()
        except TrainingDiverged as e:
            # Keep what the run achieved: metrics.json (status "diverged") and the report so far; the
            # checkpoints saved before are untouched. Then the error goes on (one line on the CLI).
            try:
                recipe.save(status="diverged", error=str(e))
            except Exception as save_error:  # the error that stopped training matters more
                log.warning(
                    "could not write the results of the diverged run: %s: %s", type(save_error).__name__, save_error
                )
            raise
        return recipe.save()  # save() closes the tracker: FINISHED
    except BaseException as e:
        tracker = getattr(recipe, "tracker", None)  # absent when setup failed before creating it
        if tracker is not None:
            tracker.close(status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
