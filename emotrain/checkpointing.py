"""Checkpoints (resume training) and slim model exports (deployment).

A checkpoint is one ``torch.save`` file of plain types + tensors, loadable with
``torch.load(path, weights_only=True)`` - so loading never runs code from the file::

    run_dir/checkpoints/emotrain_20240101_120000_epoch003_loss0.4321.pt
    run_dir/checkpoints/last.json   {"path": "<file name>", "epoch": 3, "value": 0.4321, ...}
    run_dir/checkpoints/best.json
    run_dir/checkpoints/index.json  (CheckpointManager's bookkeeping: every kept checkpoint)

Keys of a checkpoint: format, format_version, model, optimizer, scheduler, scaler,
epoch, global_step, val_loss, val_metrics, hyperparameters (resolved config), tasks,
encoder_config, model_info, monitor, timestamp, git, versions, rng, extra.
"""

from __future__ import annotations

import datetime as _dt
import enum
import errno
import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from emotrain.config import check_range, choice
from emotrain.console import FILE_ONLY
from emotrain.data.types import TaskSpec
from emotrain.errors import CheckpointError, ConfigError
from emotrain.io import atomic_write, finite_or_none, json_safe, publish_modes, write_json
from emotrain.reproducibility import capture_rng_state, git_info, library_versions, restore_rng_state

log = logging.getLogger(__name__)

FORMAT = "emotrain-checkpoint"
FORMAT_VERSION = 1
EXPORT_FORMAT = "emotrain-model"
EXPORT_META = "emotrain_model.json"
CHECKPOINT_DIR = "checkpoints"
_NAME_RE = re.compile(r"_(\d{8}_\d{6})_epoch(\d+)_loss")
# checkpoint.prefix starts every checkpoint's file name: a plain name, never a path.
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_prefix(prefix: str, key: str = "checkpoint.prefix") -> None:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ConfigError(
            f"{key}={prefix!r}: must be a plain file-name prefix (letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, at most 100 characters; no '/' or '..'): checkpoints stay inside the run directory"
        )


def validate_checkpoint_config(ckpt_cfg) -> None:
    check_range("checkpoint.save_top_k", ckpt_cfg.save_top_k, ge=-1, integer=True)
    check_prefix(ckpt_cfg.prefix)

__all__ = [
    "CheckpointManager",
    "CheckpointWriteError",
    "export_model",
    "load_checkpoint",
    "load_exported_model",
    "resolve_checkpoint",
    "save_checkpoint",
]


# --------------------------------------------------------------------------- helpers


def _plain(obj, keep_tuples: bool = False):
    """Recursively convert to types torch.load(weights_only=True) accepts: dict/list/str/num/bool/None/tensor.

    keep_tuples: keep tuples (and int dict keys) as they are - for torch state dicts, which load_state_dict expects verbatim.
    """
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True, enum_to_str=True)
    except ImportError:  # pragma: no cover
        pass
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.dtype, torch.device, torch.Size)):
        return obj
    if isinstance(obj, enum.Enum):
        return _plain(obj.value)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)) if obj.dtype.kind in "biuf" else obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, TaskSpec):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {(k if isinstance(k, (str, int)) else str(k)): _plain(v, keep_tuples) for k, v in obj.items()}
    if isinstance(obj, tuple) and keep_tuples:
        return tuple(_plain(v, keep_tuples) for v in obj)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v, keep_tuples) for v in obj]
    if hasattr(obj, "to_dict"):
        return _plain(obj.to_dict())
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint; convert it to plain types or tensors")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DistributedDataParallel / torch.compile wrappers."""
    for _ in range(4):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _cfg_get(cfg, dotted: str, default=None):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return default if node is None else node


class CheckpointWriteError(CheckpointError, OSError):
    """A checkpoint or pointer could not be written (full disk, no permission, ...): a one-line
    CheckpointError for the CLI, and still an OSError (with its errno) for callers that catch those."""


def _os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind `e`: itself, or (torch.save wraps failed writes in RuntimeError) its cause/context."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError):
            return e
        e, seen = (e.__cause__ or e.__context__), seen + 1
    return None


def _write_error(path: Path, e: BaseException, action: str) -> CheckpointWriteError | None:
    """One line for a failed checkpoint write: the path, the reason, what to do; None if not an OS failure."""
    os_error = _os_error_in(e)
    if os_error is None:
        return None
    reason = os_error.strerror or _one_line(os_error) or type(os_error).__name__
    if os_error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = "free disk space or write the run elsewhere (hydra.run.dir=DIR)"
    elif os_error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "make the directory writable or write the run elsewhere (hydra.run.dir=DIR)"
    elif os_error.errno in (errno.ENOTDIR, errno.EEXIST):
        fix = "part of that path is a file, not a directory; write the run elsewhere (hydra.run.dir=DIR)"
    else:
        fix = "check the disk and the directory, or write the run elsewhere (hydra.run.dir=DIR)"
    directory = path if path.name == CHECKPOINT_DIR else path.parent
    if (directory / "last.json").is_file():
        kept = f"checkpoints saved before are intact ({directory / 'last.json'} points to the newest): continue with resume={directory.parent}"
    else:
        kept = "no earlier checkpoint of this run"
    error = CheckpointWriteError(f"cannot {action} {path}: {reason}; {fix}. {kept}")
    error.errno = os_error.errno
    return error


def _checkpoint_name(prefix: str, stamp: str, epoch: int, val_loss) -> str:
    loss = "nan" if val_loss is None or not math.isfinite(float(val_loss)) else f"{float(val_loss):.4f}"
    return f"{prefix}_{stamp}_epoch{int(epoch):03d}_loss{loss}"


# --------------------------------------------------------------------------- save / load


def _encoder_config(config) -> dict | None:
    """The Hugging Face config as save_pretrained would write it (JSON-safe), or None."""
    if hasattr(config, "to_json_string"):
        return json.loads(config.to_json_string(use_diff=False))
    if hasattr(config, "to_dict"):
        return _plain(config.to_dict())
    return None


def _build_checkpoint(model, optimizer, scheduler, epoch, val_loss, val_metrics, hyperparameters, *, global_step, scaler_state, tasks, extra, monitor, now):
    bare = _unwrap(model)
    if tasks is None:
        tasks = getattr(bare, "tasks", None) or []
    encoder_cfg = getattr(getattr(bare, "encoder", None), "config", None)
    dropout = getattr(bare, "dropout", None)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": bare.state_dict(),
        "optimizer": None if optimizer is None else _plain(optimizer.state_dict(), keep_tuples=True),
        "scheduler": None if scheduler is None else _plain(scheduler.state_dict(), keep_tuples=True),
        "scaler": None if scaler_state is None else _plain(scaler_state, keep_tuples=True),
        "epoch": int(epoch),
        "global_step": int(global_step),
        "val_loss": None if val_loss is None else float(val_loss),
        "val_metrics": _plain(dict(val_metrics or {})),
        "hyperparameters": _plain(hyperparameters if hyperparameters is not None else {}),
        "tasks": [_plain(t) for t in tasks],
        "encoder_config": _encoder_config(encoder_cfg),
        "model_info": {
            "class": type(bare).__name__,
            "encoder_class": type(getattr(bare, "encoder", None)).__name__ if hasattr(bare, "encoder") else None,
            "pooling": getattr(bare, "pooling", None),
            "dropout": float(dropout.p) if isinstance(dropout, torch.nn.Dropout) else None,
        },
        "monitor": _plain(monitor),
        "timestamp": now.isoformat(timespec="seconds"),
        "git": git_info(),
        "versions": library_versions(),
        "rng": capture_rng_state(),
        "extra": _plain(dict(extra or {})),
    }


def _save(model, optimizer, scheduler, epoch, val_loss, val_metrics, hyperparameters, output_dir, prefix, *, global_step=0, scaler_state=None, tasks=None, extra=None, monitor=None) -> Path:
    check_prefix(prefix, "prefix")
    now = _dt.datetime.now().astimezone()
    ckpt = _build_checkpoint(
        model, optimizer, scheduler, epoch, val_loss, val_metrics, hyperparameters,
        global_step=global_step, scaler_state=scaler_state, tasks=tasks, extra=extra, monitor=monitor, now=now,
    )
    directory = Path(output_dir) / CHECKPOINT_DIR
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(directory, e, "create the checkpoint directory") from e
    stem = _checkpoint_name(prefix, now.strftime("%Y%m%d_%H%M%S"), epoch, val_loss)
    path = directory / f"{stem}.pt"
    n = 1
    while path.exists():
        path = directory / f"{stem}_{n}.pt"
        n += 1
    try:
        atomic_write(path, lambda fh: torch.save(ckpt, fh), binary=True)
    except (OSError, RuntimeError) as e:
        error = _write_error(path, e, "write the checkpoint")
        if error is None:  # a RuntimeError not caused by the file system: a bug, keep it
            raise
        raise error from e
    log.info("saved checkpoint %s", path, extra=FILE_ONLY)
    return path


def save_checkpoint(model, optimizer, scheduler, epoch, val_loss, val_metrics, hyperparameters, output_dir, prefix="emotrain", *, global_step=0, scaler_state=None, tasks=None, extra=None) -> Path:
    """Write `output_dir/checkpoints/{prefix}_{YYYYMMDD_HHMMSS}_epoch{NNN}_loss{X.XXXX}.pt` atomically; returns its path.

    `hyperparameters`: the resolved config (dict or DictConfig); `scaler_state`: MixedPrecisionTrainer.state_dict()
    or GradScaler.state_dict(); `tasks`: TaskSpecs (default: model.tasks); `extra`: caller state (plain types/tensors).
    """
    return _save(model, optimizer, scheduler, epoch, val_loss, val_metrics, hyperparameters, output_dir, prefix,
                 global_step=global_step, scaler_state=scaler_state, tasks=tasks, extra=extra)


def _read_checkpoint(path: Path, map_location) -> dict:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; check the path (a .pt file, a checkpoints/ directory or a run directory)")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file; pass a checkpoint file, a checkpoints/ directory or a run directory")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint (interrupted copy?); delete it and use another checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused by the safe loader (weights_only=True): it needs Python objects beyond tensors and plain types, "
            "so it is not an emotrain checkpoint; only if you trust its source, load it yourself and re-save with emotrain.checkpointing.save_checkpoint"
        ) from None
    except Exception as e:  # truncated zip, text file, foreign zip, ...
        reason = _one_line(e).split(". ")[0][:120] or "-"
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt or not a torch file: {type(e).__name__}: {reason}); "
            "use another checkpoint, e.g. the one checkpoints/last.json points to"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a torch file but not an emotrain checkpoint (no '{FORMAT}' format marker); "
            "pass a file written by emotrain.checkpointing.save_checkpoint"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version} is newer than this emotrain supports ({FORMAT_VERSION}); upgrade emotrain")
    return ckpt


def _check_state_dict(path: Path, model: torch.nn.Module, state: dict) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        example = (shapes or missing or unexpected)[0]
        raise CheckpointError(
            f"{path}: weights do not match the model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(shapes)} with other shapes, e.g. {example}); build the model with the checkpoint's backbone and tasks"
        )


def _load_scaler(scaler, state) -> None:
    if not state:
        return
    if isinstance(scaler, torch.amp.GradScaler):
        inner = state if "scale" in state else state.get("scaler")
        if inner:
            scaler.load_state_dict(inner)
    else:  # MixedPrecisionTrainer-like: {"scaler": ..., "skipped_steps": ...}
        scaler.load_state_dict(state if ("scaler" in state or "skipped_steps" in state) else {"scaler": state})


def load_checkpoint(path, model=None, optimizer=None, scheduler=None, scaler=None, *, map_location="cpu", restore_rng=False) -> dict:
    """Load a checkpoint safely (weights_only=True) into the given objects; returns the whole checkpoint dict.

    `path` may also be a checkpoints/ or run directory (its last checkpoint). `scaler`: a GradScaler or a
    MixedPrecisionTrainer. `restore_rng=True` restores python/numpy/torch(/CUDA) RNG states.
    Any unusable file raises a one-line CheckpointError.
    """
    path = Path(path)
    if path.is_dir():
        path = resolve_checkpoint(path)
    ckpt = _read_checkpoint(path, map_location)
    try:
        if model is not None:
            state = ckpt.get("model")
            if not isinstance(state, Mapping):
                raise CheckpointError(f"{path}: has no model weights; use a checkpoint written by save_checkpoint")
            bare = _unwrap(model)
            _check_state_dict(path, bare, state)
            bare.load_state_dict(state)
        if optimizer is not None:
            if ckpt.get("optimizer") is None:
                raise CheckpointError(f"{path}: has no optimizer state; resume from a checkpoint saved with an optimizer")
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            if ckpt.get("scheduler") is None:
                raise CheckpointError(f"{path}: has no scheduler state; resume from a checkpoint saved with a scheduler")
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None:
            _load_scaler(scaler, ckpt.get("scaler"))
    except CheckpointError:
        raise
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(
            f"{path}: state does not fit the given objects ({type(e).__name__}: {_one_line(e)[:200]}); "
            "build optimizer/scheduler the same way as the run that saved it"
        ) from None
    if restore_rng and ckpt.get("rng"):
        restore_rng_state(ckpt["rng"])
    ckpt["path"] = str(path)
    return ckpt


# --------------------------------------------------------------------------- retention


def update_checkpoint_extra(path, updates: dict) -> Path:
    """Merge `updates` (plain types) into a checkpoint's `extra`, rewriting it atomically.

    Used for what is only known after training, e.g. the decision thresholds tuned on val.
    """
    path = Path(path)
    ckpt = _read_checkpoint(path, "cpu")
    ckpt["extra"] = {**(ckpt.get("extra") or {}), **_plain(dict(updates))}
    atomic_write(path, lambda fh: torch.save(ckpt, fh), binary=True)
    return path


def _checkpoint_dir(path: Path) -> Path:
    return path / CHECKPOINT_DIR if (path / CHECKPOINT_DIR).is_dir() else path


def _sort_key(p: Path):
    m = _NAME_RE.search(p.name)
    return (p.stat().st_mtime, m.group(1) if m else "", int(m.group(2)) if m else -1, p.name)


def resolve_checkpoint(path, which: str = "last") -> Path:
    """A checkpoint file from a file, a checkpoints/ directory or a run directory (`which`: "last" or "best")."""
    if which not in ("last", "best"):
        raise CheckpointError(f"which={which!r}: use 'last' or 'best'")
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}; pass a checkpoint file, a checkpoints/ directory or a run directory")
    directory = _checkpoint_dir(path)
    pointer = directory / f"{which}.json"
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["path"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{pointer}: unreadable pointer file ({type(e).__name__}); delete it or pass a checkpoint file directly") from None
        target = directory / Path(str(name)).name
        if not target.is_file():
            raise CheckpointError(f"{pointer} points to {target.name}, which does not exist; pass a checkpoint file from {directory} directly")
        return target
    if which == "best":
        raise CheckpointError(f"no best checkpoint in {directory} (no best.json; save_top_k=0 keeps only the last); use which='last' or a file")
    files = sorted((p for p in directory.glob("*.pt") if p.is_file()), key=_sort_key)
    if not files:
        raise CheckpointError(f"no checkpoints in {directory}; train with checkpointing on, or pass a checkpoint file")
    return files[-1]


class CheckpointManager:
    """Saves checkpoints under `output_dir/checkpoints/`, keeps the `save_top_k` best by `monitor` plus the last.

    save_top_k: 0 keeps only the last, -1 keeps all. Maintains best.json / last.json pointers and index.json;
    a new manager on the same directory picks up the kept checkpoints from index.json (resume).
    """

    def __init__(self, output_dir, prefix: str = "emotrain", save_top_k: int = 1, monitor: str = "loss", mode: str = "min"):
        mode = choice(mode)
        if mode not in ("min", "max"):
            raise CheckpointError(f"mode={mode!r}: use 'min' or 'max'")
        if save_top_k < -1:
            raise CheckpointError(f"save_top_k={save_top_k}: use -1 (keep all), 0 (only last) or a positive count")
        self.output_dir = Path(output_dir)
        self.dir = self.output_dir / CHECKPOINT_DIR
        self.prefix, self.save_top_k, self.monitor, self.mode = prefix, int(save_top_k), monitor, mode
        self.records: list[dict] = []  # {"path": name, "epoch", "global_step", "value"} of kept checkpoints, oldest first
        self._load_index()

    # -- bookkeeping
    def _load_index(self) -> None:
        index = self.dir / "index.json"
        if not index.is_file():
            return
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s (%s)", index, e)
            return
        if data.get("monitor") != self.monitor or data.get("mode") != self.mode:
            log.warning("%s tracks %s/%s, this run %s/%s: earlier checkpoints are kept but not ranked", index, data.get("monitor"), data.get("mode"), self.monitor, self.mode)
            return
        self.records = [r for r in data.get("checkpoints", []) if (self.dir / r["path"]).is_file()]

    def _ranked(self) -> list[dict]:
        scored = [r for r in self.records if r.get("value") is not None]
        # Stable sort: among equal values the earlier checkpoint stays ahead.
        return sorted(scored, key=lambda r: r["value"], reverse=(self.mode == "max"))

    @property
    def last(self) -> dict | None:
        return self.records[-1] if self.records else None

    @property
    def best(self) -> dict | None:
        ranked = self._ranked()
        return ranked[0] if ranked and self.save_top_k != 0 else None

    @property
    def last_path(self) -> Path | None:
        return self.dir / self.last["path"] if self.last else None

    @property
    def best_path(self) -> Path | None:
        return self.dir / self.best["path"] if self.best else None

    def _pointer(self, record: dict) -> dict:
        return {**record, "monitor": self.monitor, "mode": self.mode}

    # -- saving
    def save(self, model, optimizer, scheduler, epoch, val_loss, val_metrics, hyperparameters, value=None, *, global_step=0, scaler_state=None, tasks=None, extra=None) -> Path:
        """save_checkpoint + retention. `value`: the monitored value (default: val_metrics[monitor], or val_loss for "loss")."""
        if value is None:
            metrics = val_metrics or {}
            if self.monitor in metrics:
                value = metrics[self.monitor]
            elif self.monitor == "loss":
                value = val_loss
            else:
                raise CheckpointError(f"monitor={self.monitor}: not in val_metrics ({', '.join(map(str, metrics)) or 'empty'}); pass value= or a known metric")
        value = finite_or_none(value)
        path = _save(
            model, optimizer, scheduler, epoch, val_loss, val_metrics, hyperparameters, self.output_dir, self.prefix,
            global_step=global_step, scaler_state=scaler_state, tasks=tasks, extra=extra,
            monitor={"name": self.monitor, "mode": self.mode, "value": value},
        )
        self.records.append({"path": path.name, "epoch": int(epoch), "global_step": int(global_step), "value": value})
        keep = {id(self.records[-1])}
        if self.save_top_k != 0:
            ranked = self._ranked()
            keep |= {id(r) for r in (ranked if self.save_top_k < 0 else ranked[: self.save_top_k])}
        dropped = [r for r in self.records if id(r) not in keep]
        self.records = [r for r in self.records if id(r) in keep]
        # Pointers first, deletions last: a crash in between leaves extra files, never dangling pointers.
        pointers = [("index.json", {"monitor": self.monitor, "mode": self.mode, "save_top_k": self.save_top_k, "checkpoints": self.records}), ("last.json", self._pointer(self.last))]
        if self.best is not None:
            pointers.append(("best.json", self._pointer(self.best)))
        for name, content in pointers:
            try:
                write_json(self.dir / name, json_safe(content))
            except OSError as e:
                raise _write_error(self.dir / name, e, "update") from e
        for r in dropped:
            try:
                (self.dir / r["path"]).unlink()
            except FileNotFoundError:
                pass
        return path


# --------------------------------------------------------------------------- export


def export_model(checkpoint_path, out_dir, tokenizer, *, thresholds: dict | None = None) -> Path:
    """Slim deployment export: config.json, model.safetensors, tokenizer files and emotrain_model.json in `out_dir`.

    `checkpoint_path` may be a file, a checkpoints/ or a run directory (its best checkpoint if any, else last).
    `thresholds` ({task: [per-label threshold]}) overrides the checkpoint's own (tuned after training ends).
    """
    from safetensors.torch import save_file

    src = Path(checkpoint_path)
    if src.is_dir():
        try:
            src = resolve_checkpoint(src, "best")
        except CheckpointError:
            src = resolve_checkpoint(src, "last")
    ckpt = _read_checkpoint(src, "cpu")
    if not ckpt.get("encoder_config"):
        raise CheckpointError(f"{src}: has no encoder_config (the model had no .encoder.config); cannot export a Hugging Face config.json")
    state = ckpt.get("model")
    if not isinstance(state, Mapping) or not state:
        raise CheckpointError(f"{src}: has no model weights; use a checkpoint written by save_checkpoint")
    cfg = ckpt.get("hyperparameters") or {}
    info = ckpt.get("model_info") or {}
    extra = ckpt.get("extra") or {}
    meta = {
        "format": EXPORT_FORMAT,
        "format_version": FORMAT_VERSION,
        "tasks": ckpt.get("tasks") or [],
        "primary_task": _cfg_get(cfg, "data.primary_task") or ((ckpt.get("tasks") or [{}])[0].get("name")),
        "pooling": _cfg_get(cfg, "backbone.pooling", info.get("pooling") or "mean"),
        "dropout": _cfg_get(cfg, "trainer.dropout", info.get("dropout") if info.get("dropout") is not None else 0.1),
        "max_length": _cfg_get(cfg, "backbone.max_length"),
        "preprocess": _cfg_get(cfg, "data.preprocess", {}),
        "thresholds": thresholds if thresholds is not None else extra.get("thresholds"),
        "backbone": _cfg_get(cfg, "backbone.name"),
        "source_checkpoint": str(src.resolve()),
        "epoch": ckpt.get("epoch"),
        "global_step": ckpt.get("global_step"),
        "val_loss": ckpt.get("val_loss"),
        "val_metrics": ckpt.get("val_metrics"),
        "checkpoint_timestamp": ckpt.get("timestamp"),
        "exported_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "git": ckpt.get("git"),
        "versions": ckpt.get("versions"),
        "export_versions": library_versions(),
    }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Build everything in a staging dir next to out_dir, then move files in; emotrain_model.json goes last.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        write_json(staging / "config.json", json_safe(ckpt["encoder_config"]))
        # clone(): safetensors refuses tensors that share storage (tied weights).
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(str(staging))
        write_json(staging / EXPORT_META, json_safe(meta))
        publish_modes(staging)
        names = sorted((p for p in staging.iterdir() if p.name != EXPORT_META), key=lambda p: p.name) + [staging / EXPORT_META]
        for p in names:
            target = out_dir / p.name
            if p.is_dir():
                if target.exists():
                    shutil.rmtree(target)
            os.replace(p, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("exported %s to %s", src, out_dir, extra=FILE_ONLY)
    return out_dir


def load_exported_model(directory):
    """Rebuild (MultiTaskModel in eval mode, tokenizer, meta) from an export_model directory, offline."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from emotrain.models.multitask import MultiTaskModel

    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"exported model not found: {directory}; pass the directory export_model wrote")
    for name in (EXPORT_META, "config.json", "model.safetensors"):
        if not (directory / name).is_file():
            raise CheckpointError(f"{directory / name}: missing; re-run export_model into {directory}")
    meta_path = directory / EXPORT_META
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError("no format marker")
        tasks = [TaskSpec.from_dict(t) for t in meta["tasks"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable or not an emotrain export ({type(e).__name__}: {_one_line(e)[:120]}); re-run export_model") from None
    if not tasks:
        raise CheckpointError(f"{meta_path}: lists no tasks; re-run export_model")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = AutoConfig.from_pretrained(str(directory), local_files_only=True)
            encoder = AutoModel.from_config(config)
    except Exception as e:
        raise CheckpointError(f"{directory / 'config.json'}: cannot build the encoder ({type(e).__name__}: {_one_line(e)[:160]}); re-run export_model") from None
    weights_path = directory / "model.safetensors"
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{weights_path}: unreadable weights (truncated or corrupt: {_one_line(e)[:120]}); re-run export_model") from None
    heads = {k.split(".")[1] for k in state if k.startswith("heads.")}
    names = [t.name for t in tasks]
    if heads != set(names):
        raise CheckpointError(f"{weights_path}: heads {sorted(heads)} do not match the tasks {names} in {EXPORT_META}; re-run export_model")
    for t in tasks:
        w = state.get(f"heads.{t.name}.weight")
        if w is None or w.shape[0] != t.num_labels:
            got = None if w is None else w.shape[0]
            raise CheckpointError(f"{weights_path}: head '{t.name}' has {got} outputs but {EXPORT_META} lists {t.num_labels} labels; re-run export_model")
    model = MultiTaskModel(encoder, tasks, pooling=meta.get("pooling") or "mean", dropout=float(meta.get("dropout") or 0.0))
    # AutoModel builds BERT with a pooler; drop it when the trained encoder had none (it is unused anyway).
    own = model.state_dict()
    if getattr(model.encoder, "pooler", None) is not None and not any(k.startswith("encoder.pooler.") for k in state):
        if all(k.startswith("encoder.pooler.") for k in own if k not in state):
            model.encoder.pooler = None
    try:
        _check_state_dict(weights_path, model, state)
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{weights_path}: weights do not fit config.json ({_one_line(e)[:160]}); re-run export_model") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:
        raise CheckpointError(f"{directory}: cannot load the tokenizer files ({type(e).__name__}: {_one_line(e)[:120]}); re-run export_model") from None
    model.eval()
    return model, tokenizer, meta
