"""The training recipe: setup, train, save.

Read it top to bottom: `run(cfg)` validates the config, loads and preprocesses the
data, builds the model, runs the loop (AMP autocast -> scaled backward -> unscale ->
clip -> step -> scaler update -> scheduler), evaluates every epoch (or every N
steps), keeps the best weights, evaluates them on the test split and writes
`metrics.json` into the run directory.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from emotrain.data.cv import apply_cv
from emotrain.data.loading import load_data
from emotrain.data.types import DataBundle, Split
from emotrain.errors import ConfigError, EmotrainError
from emotrain.io import write_json
from emotrain.models.backbones import encoder_layers, load_encoder, load_tokenizer
from emotrain.models.multitask import MultiTaskModel
from emotrain.preprocessing import Preprocessor
from emotrain.reproducibility import git_info, library_versions, set_seed
from emotrain.training.batching import encode_split, make_loader
from emotrain.training.evaluation import EarlyStopping, evaluate
from emotrain.training.freeze import apply_freeze, validate_freeze
from emotrain.training.losses import MultiTaskLoss, class_counts
from emotrain.training.optim import build_optimizer
from emotrain.training.precision import MixedPrecisionTrainer, get_device, resolve_precision
from emotrain.training.schedulers import build_scheduler

log = logging.getLogger("emotrain")


class TrainingDiverged(EmotrainError):
    """Too many consecutive non-finite losses."""


# --------------------------------------------------------------------------- config checks


def validate_config(cfg: DictConfig) -> None:
    """Checks the schema cannot express; run before any data is read or model built."""
    t = cfg.trainer
    positive = {"trainer.epochs": t.epochs, "trainer.batch_size": t.batch_size, "trainer.eval_batch_size": t.eval_batch_size, "trainer.grad_accum_steps": t.grad_accum_steps, "backbone.max_length": cfg.backbone.max_length}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key}={value}: must be >= 1")
    for key in ("max_steps", "eval_every_steps", "num_threads"):
        value = t[key]
        if value is not None and value < 1:
            raise ConfigError(f"trainer.{key}={value}: must be >= 1 or null")
    if t.max_grad_norm is not None and t.max_grad_norm <= 0:
        raise ConfigError(f"trainer.max_grad_norm={t.max_grad_norm}: must be > 0 or null")
    if not 0.0 <= t.dropout < 1.0:
        raise ConfigError(f"trainer.dropout={t.dropout}: must be in [0, 1)")
    if t.early_stopping.patience is not None and t.early_stopping.patience < 1:
        raise ConfigError(f"trainer.early_stopping.patience={t.early_stopping.patience}: must be >= 1 or null")
    for key in ("val_fraction", "test_fraction"):
        if not 0.0 < cfg.data[key] < 1.0:
            raise ConfigError(f"data.{key}={cfg.data[key]}: must be in (0, 1)")
    if cfg.data.val_fraction + cfg.data.test_fraction >= 1.0:
        raise ConfigError("data.val_fraction + data.test_fraction must be < 1")
    if cfg.backbone.kind == "tiny" and cfg.backbone.hidden_size % cfg.backbone.num_heads:
        raise ConfigError(f"backbone.hidden_size={cfg.backbone.hidden_size} must be divisible by backbone.num_heads={cfg.backbone.num_heads}")
    if cfg.cv.kind == "kfold":
        if cfg.cv.k < 2:
            raise ConfigError(f"cv.k={cfg.cv.k}: k-fold needs k >= 2")
        if not 0 <= cfg.cv.fold < cfg.cv.k:
            raise ConfigError(f"cv.fold={cfg.cv.fold}: must be in [0, {cfg.cv.k}) for cv.k={cfg.cv.k}")
    if cfg.freeze.layers < 0:
        raise ConfigError(f"freeze.layers={cfg.freeze.layers}: must be >= 0")


def monitor_keys(bundle: DataBundle) -> list[str]:
    keys = ["loss", "macro_f1"]
    for task in bundle.tasks:
        acc = "subset_accuracy" if task.multilabel else "accuracy"
        keys += [f"{task.name}/{m}" for m in ("loss", "macro_f1", "micro_f1", acc)]
    return keys


def check_monitor(cfg: DictConfig, bundle: DataBundle) -> None:
    keys = monitor_keys(bundle)
    if cfg.trainer.monitor not in keys:
        raise ConfigError(f"trainer.monitor={cfg.trainer.monitor}: unknown metric; choose one of {', '.join(keys)}")


# --------------------------------------------------------------------------- training state


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    global_step: int = 0  # optimiser steps taken
    best_value: float | None = None
    best_epoch: int | None = None
    best_metrics: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    lr_history: list[list[float]] = field(default_factory=list)  # [step, lr of the first group]
    nonfinite_steps: int = 0
    stopped_early: bool = False


def is_better(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


# --------------------------------------------------------------------------- recipe


def preprocess_bundle(bundle: DataBundle, pre: Preprocessor) -> DataBundle:
    def apply(split: Split | None) -> Split | None:
        if split is None:
            return None
        return Split(texts=pre.map(split.texts), targets=split.targets, name=split.name)

    bundle.train, bundle.val, bundle.test = apply(bundle.train), apply(bundle.val), apply(bundle.test)
    return bundle


def run(cfg: DictConfig, overrides: list[str] | None = None) -> dict:
    """Train and evaluate one model. Returns the metrics written to metrics.json."""
    started = time.time()
    validate_config(cfg)
    out_dir = Path(cfg.paths.output_dir)
    root_dir = Path(cfg.paths.root_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    set_seed(cfg.seed, cfg.deterministic)

    # ---- device and precision
    device, _ = get_device()
    requested_precision = str(getattr(cfg.precision.mode, "value", cfg.precision.mode))
    precision, warning = resolve_precision(requested_precision, device)
    if warning:
        log.warning(warning)
    log.info("device=%s precision=%s (requested %s)", device.type, precision, requested_precision)

    # ---- data
    bundle = load_data(cfg.data, root_dir)
    bundle = apply_cv(bundle, cfg.cv)
    check_monitor(cfg, bundle)
    preprocessor = Preprocessor.from_config(cfg.data.preprocess)
    bundle = preprocess_bundle(bundle, preprocessor)
    log.info(
        "data=%s tasks=%s train=%d val=%d test=%d",
        cfg.data.kind,
        ", ".join(f"{t.name}({t.num_labels}{', multi-label' if t.multilabel else ''})" for t in bundle.tasks),
        len(bundle.train),
        len(bundle.val),
        len(bundle.test) if bundle.test is not None else 0,
    )

    # ---- tokenizer and model
    tokenizer = load_tokenizer(cfg.backbone, root_dir)
    max_length = cfg.backbone.max_length
    train_data = encode_split(tokenizer, bundle.train, max_length)
    val_data = encode_split(tokenizer, bundle.val, max_length)
    test_data = encode_split(tokenizer, bundle.test, max_length) if bundle.test is not None else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    encoder = load_encoder(cfg.backbone, root_dir, vocab_size=len(tokenizer))
    validate_freeze(cfg.freeze, len(encoder_layers(encoder)))
    pooling = str(getattr(cfg.backbone.pooling, "value", cfg.backbone.pooling))
    model = MultiTaskModel(encoder, bundle.tasks, pooling=pooling, dropout=cfg.trainer.dropout).to(device)
    criterion = MultiTaskLoss(bundle.tasks, cfg.loss, class_counts(bundle.tasks, bundle.train.targets), len(bundle.train)).to(device)
    optimizer = build_optimizer(model, cfg.optim, list(criterion.parameters()), device)
    params = [p for g in optimizer.param_groups for p in g["params"]]

    # ---- schedule
    accum = cfg.trainer.grad_accum_steps
    train_loader = make_loader(train_data, pad_id, cfg.trainer.batch_size, shuffle=True, group_by_length=cfg.trainer.length_grouping, seed=cfg.seed)
    steps_per_epoch = math.ceil(len(train_loader) / accum)
    total_steps = steps_per_epoch * cfg.trainer.epochs
    if cfg.trainer.max_steps:
        total_steps = min(total_steps, cfg.trainer.max_steps)
    scheduler = build_scheduler(optimizer, cfg.scheduler, total_steps)
    mp = MixedPrecisionTrainer(device, precision)
    monitor, mode = cfg.trainer.monitor, str(getattr(cfg.trainer.monitor_mode, "value", cfg.trainer.monitor_mode))
    stopper = EarlyStopping(cfg.trainer.early_stopping.patience, cfg.trainer.early_stopping.min_delta, mode)
    state = TrainState()
    best_weights = copy.deepcopy(model.state_dict())
    log.info(
        "model=%s params=%d batch=%d x accum %d = effective batch %d; %d optimiser steps",
        cfg.backbone.name, sum(p.numel() for p in model.parameters()), cfg.trainer.batch_size, accum, cfg.trainer.batch_size * accum, total_steps,
    )

    def run_evaluation(train_loss: float | None) -> bool:
        """Evaluate on val, track the best weights; True when early stopping says stop."""
        nonlocal best_weights
        metrics, _, _ = evaluate(model, criterion, val_data, bundle.tasks, pad_token_id=pad_id, batch_size=cfg.trainer.eval_batch_size, device=device, mp=mp)
        entry = {
            "epoch": state.epoch,
            "step": state.global_step,
            "train_loss": train_loss,
            "val": metrics,
            "lr": scheduler.get_last_lr()[0],
            "trainable_params": trainable,
            "task_weights": criterion.task_weights(),
        }
        state.history.append(entry)
        value = metrics[monitor]
        if is_better(value, state.best_value, mode):
            state.best_value, state.best_epoch, state.best_metrics = value, state.epoch, metrics
            best_weights = copy.deepcopy(model.state_dict())
        log.info(
            "epoch %d step %d: train_loss=%s val_loss=%.4f val_macro_f1=%.4f %s=%.4f (best %.4f @ epoch %s)",
            state.epoch, state.global_step, "n/a" if train_loss is None else f"{train_loss:.4f}", metrics["loss"], metrics["macro_f1"], monitor, value, state.best_value, state.best_epoch,
        )
        if criterion.uncertainty:
            log.info("task weights: %s", ", ".join(f"{k}={v:.3f}" for k, v in criterion.task_weights().items()))
        return stopper.step(value)

    # ---- train
    epochs_bar = tqdm(range(cfg.trainer.epochs), desc="epochs", disable=not cfg.trainer.progress, dynamic_ncols=True)
    stop = False
    for epoch in epochs_bar:
        trainable = apply_freeze(model, cfg.freeze, epoch)
        log.info("epoch %d: %d trainable parameters", epoch + 1, trainable)
        model.train()
        train_loader.batch_sampler.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        seen = 0
        batches = tqdm(train_loader, desc=f"epoch {epoch + 1}", leave=False, disable=not cfg.trainer.progress, dynamic_ncols=True)
        for i, batch in enumerate(batches):
            ids = batch["input_ids"].to(device, non_blocking=True)
            mask = batch["attention_mask"].to(device, non_blocking=True)
            targets = {k: v.to(device, non_blocking=True) for k, v in batch["targets"].items()}

            with mp.autocast():
                logits = model(ids, mask)
            loss, _ = criterion(logits, targets)  # losses in fp32 outside autocast
            if not torch.isfinite(loss):
                state.nonfinite_steps += 1
                optimizer.zero_grad(set_to_none=True)
                if state.nonfinite_steps >= cfg.trainer.max_nonfinite_steps:
                    raise TrainingDiverged(
                        f"loss was non-finite for {state.nonfinite_steps} consecutive steps at epoch {epoch + 1}: "
                        "lower optim.lr, set trainer.max_grad_norm, or use precision=fp32"
                    )
                continue
            state.nonfinite_steps = 0
            mp.scale_loss(loss / accum).backward()
            loss_sum += loss.detach() * ids.shape[0]
            seen += ids.shape[0]

            if (i + 1) % accum == 0 or i + 1 == len(train_loader):
                mp.step(optimizer, params, cfg.trainer.max_grad_norm)  # unscale -> clip -> step
                mp.update()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                state.lr_history.append([state.global_step, scheduler.get_last_lr()[0]])
                if state.global_step % cfg.trainer.log_every_steps == 0:
                    log.debug("step %d lr=%.3e", state.global_step, scheduler.get_last_lr()[0])
                if cfg.trainer.eval_every_steps and state.global_step % cfg.trainer.eval_every_steps == 0:
                    stop = run_evaluation(float(loss_sum) / max(seen, 1))
                    model.train()
                if stop or (cfg.trainer.max_steps and state.global_step >= cfg.trainer.max_steps):
                    break

        state.epoch = epoch + 1
        train_loss = float(loss_sum) / max(seen, 1)
        if not cfg.trainer.eval_every_steps or not state.history or state.history[-1]["step"] != state.global_step:
            stop = run_evaluation(train_loss) or stop
        else:
            state.history[-1]["train_loss"] = train_loss
        epochs_bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{state.history[-1]['val']['loss']:.4f}")
        if stop:
            state.stopped_early = True
            log.info("early stopping after epoch %d (no %s improvement for %d evaluations)", state.epoch, monitor, stopper.patience)
            break
        if cfg.trainer.max_steps and state.global_step >= cfg.trainer.max_steps:
            log.info("reached trainer.max_steps=%d", cfg.trainer.max_steps)
            break

    # ---- test the best weights
    model.load_state_dict(best_weights)
    final_val = state.history[-1]["val"]
    test_metrics, test_per_class = {}, {}
    if test_data is not None:
        test_metrics, test_per_class, _ = evaluate(model, criterion, test_data, bundle.tasks, pad_token_id=pad_id, batch_size=cfg.trainer.eval_batch_size, device=device, mp=mp)
        log.info("test (best epoch %s): loss=%.4f macro_f1=%.4f %s", state.best_epoch, test_metrics["loss"], test_metrics["macro_f1"],
                 " ".join(f"{t.name}/macro_f1={test_metrics[f'{t.name}/macro_f1']:.4f}" for t in bundle.tasks))

    # ---- save
    results = {
        "status": "completed",
        "objective": {"metric": monitor, "mode": mode, "split": "val", "value": state.best_value},
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "global_steps": state.global_step,
        "stopped_early": state.stopped_early,
        "best_val": state.best_metrics,
        "final_val": final_val,
        "test": test_metrics,
        "test_per_class": test_per_class,
        "history": state.history,
        "wall_time_s": round(time.time() - started, 3),
        "device": device.type,
        "precision": {"requested": requested_precision, "effective": mp.precision, "skipped_steps": mp.skipped_steps},
        "seed": cfg.seed,
        "deterministic": cfg.deterministic,
        "overrides": list(overrides or []),
        "tasks": [t.to_dict() for t in bundle.tasks],
        "primary_task": bundle.primary_task,
        "data_sizes": {"train": len(bundle.train), "val": len(bundle.val), "test": len(bundle.test) if bundle.test is not None else 0},
        "effective_batch_size": cfg.trainer.batch_size * accum,
        "git": git_info(),
        "versions": library_versions(),
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }
    write_json(out_dir / "metrics.json", results)
    log.info("wrote %s (%.1fs)", out_dir / "metrics.json", results["wall_time_s"])
    return results
