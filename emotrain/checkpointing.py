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
import json
import logging
import math
import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from emotrain.config import check_range, flatten_dict
from emotrain.console import FILE_ONLY
from emotrain.data.types import TaskSpec
from emotrain.errors import CheckpointError, ConfigError
from emotrain.io import atomic_write
from emotrain.reproducibility import capture_rng_state, git_info, library_versions, restore_rng_state
from emotrain.utils import one_line, os_error_advice

log = logging.getLogger(__name__)

FORMAT = "emotrain-checkpoint"
FORMAT_VERSION = 1
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
    "CheckpointWriteError",
    "check_resume_compatible",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_checkpoint",
    "save_checkpoint",
]


# --------------------------------------------------------------------------- helpers


def _storable(obj, keep_tuples: bool = False):
    """Recursively convert to types torch.load(weights_only=True) accepts: dict/list/str/num/bool/None/tensor.

    keep_tuples: keep tuples (and int dict keys) as they are - for torch state dicts, which load_state_dict
    expects verbatim.
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
        return _storable(obj.value)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)) if obj.dtype.kind in "biuf" else obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return str(obj)
    if isinstance(obj, TaskSpec):
        return obj.to_dict()
    if isinstance(obj, Mapping):
        return {(k if isinstance(k, (str, int)) else str(k)): _storable(v, keep_tuples) for k, v in obj.items()}
    if isinstance(obj, tuple) and keep_tuples:
        return tuple(_storable(v, keep_tuples) for v in obj)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_storable(v, keep_tuples) for v in obj]
    if hasattr(obj, "to_dict"):
        return _storable(obj.to_dict())
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint; convert it to plain types or tensors")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DistributedDataParallel / torch.compile wrappers."""
    for _ in range(4):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, torch.nn.Module):
            break
        model = inner
    return model


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
    reason = os_error.strerror or one_line(os_error) or type(os_error).__name__
    fix = os_error_advice(os_error.errno)
    directory = path if path.name == CHECKPOINT_DIR else path.parent
    if (directory / "last.json").is_file():
        kept = (
            f"checkpoints saved before are intact ({directory / 'last.json'} points to the newest): "
            f"continue with resume={directory.parent}"
        )
    else:
        kept = "no earlier checkpoint of this run"
    error = CheckpointWriteError(f"cannot {action} {path}: {reason}; {fix}. {kept}")
    error.errno = os_error.errno
    return error


def _checkpoint_name(prefix: str, stamp: str, epoch: int, val_loss) -> str:
    loss = "nan" if val_loss is None or not math.isfinite(float(val_loss)) else f"{float(val_loss):.4f}"
    return f"{prefix}_{stamp}_epoch{int(epoch):03d}_loss{loss}"


# --------------------------------------------------------------------------- resume

# Config keys that change the model's shape or tasks: a resume with other values is refused.
SHAPE_KEYS = (
    "backbone.kind",
    "backbone.name",
    "backbone.path",
    "backbone.hidden_size",
    "backbone.num_layers",
    "backbone.num_heads",
    "backbone.intermediate_size",
    "backbone.pooling",
)


def check_resume_compatible(
    saved: dict, current: dict, saved_tasks: list[dict], current_tasks: list[dict]
) -> list[str]:
    """ConfigError on changes to the model's shape or tasks between a checkpoint and the run resuming it; returns
    the other changed config keys (to log)."""
    a, b = flatten_dict(saved), flatten_dict(current)
    changed = sorted(
        k for k in set(a) | set(b) if a.get(k) != b.get(k) and not k.startswith("paths.") and k != "resume"
    )
    # A shape key counts where the current option has it: checkpoints from before per-option schemas list the
    # tiny backbone's sizes for every backbone.
    shape = [k for k in changed if k in SHAPE_KEYS and k in b]
    if saved_tasks != current_tasks:
        shape.append("tasks (names, labels or multi-label flags)")
    if shape:
        raise ConfigError(
            f"resume: the checkpoint was trained with a different model shape or tasks ({', '.join(shape)}); use the "
            "same settings as that run"
        )
    return changed


# --------------------------------------------------------------------------- save / load


def _encoder_config(config) -> dict | None:
    """The Hugging Face config as save_pretrained would write it (JSON-safe), or None."""
    if hasattr(config, "to_json_string"):
        return json.loads(config.to_json_string(use_diff=False))
    if hasattr(config, "to_dict"):
        return _storable(config.to_dict())
    return None


def _build_checkpoint(
    model,
    optimizer,
    scheduler,
    epoch,
    val_loss,
    val_metrics,
    hyperparameters,
    *,
    global_step,
    scaler_state,
    tasks,
    extra,
    monitor,
    now,
    model_info=None,
):
    bare = _unwrap(model)
    if tasks is None:
        tasks = getattr(bare, "tasks", None) or []
    encoder_cfg = getattr(getattr(bare, "encoder", None), "config", None)
    dropout = getattr(bare, "dropout", None)
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": bare.state_dict(),
        "optimizer": None if optimizer is None else _storable(optimizer.state_dict(), keep_tuples=True),
        "scheduler": None if scheduler is None else _storable(scheduler.state_dict(), keep_tuples=True),
        "scaler": None if scaler_state is None else _storable(scaler_state, keep_tuples=True),
        "epoch": int(epoch),
        "global_step": int(global_step),
        "val_loss": None if val_loss is None else float(val_loss),
        "val_metrics": _storable(dict(val_metrics or {})),
        "hyperparameters": _storable(hyperparameters if hyperparameters is not None else {}),
        "tasks": [_storable(t) for t in tasks],
        "encoder_config": _encoder_config(encoder_cfg),
        "model_info": {
            "class": type(bare).__name__,
            "encoder_class": type(getattr(bare, "encoder", None)).__name__ if hasattr(bare, "encoder") else None,
            "pooling": getattr(bare, "pooling", None),
            "dropout": float(dropout.p) if isinstance(dropout, torch.nn.Dropout) else None,
            # The caller's model facts (max_length, preprocess, primary_task, backbone, tokenizer_dir): what loading the
            # model needs, stored explicitly so that no reader depends on config key paths.
            **_storable(dict(model_info or {})),
        },
        "monitor": _storable(monitor),
        "timestamp": now.isoformat(timespec="seconds"),
        "git": git_info(),
        "versions": library_versions(),
        "rng": capture_rng_state(),
        "extra": _storable(dict(extra or {})),
    }


def _save(
    model,
    optimizer,
    scheduler,
    epoch,
    val_loss,
    val_metrics,
    hyperparameters,
    output_dir,
    prefix,
    *,
    global_step=0,
    scaler_state=None,
    tasks=None,
    extra=None,
    monitor=None,
    model_info=None,
) -> Path:
    check_prefix(prefix, "prefix")
    now = _dt.datetime.now().astimezone()
    ckpt = _build_checkpoint(
        model,
        optimizer,
        scheduler,
        epoch,
        val_loss,
        val_metrics,
        hyperparameters,
        global_step=global_step,
        scaler_state=scaler_state,
        tasks=tasks,
        extra=extra,
        monitor=monitor,
        now=now,
        model_info=model_info,
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


def save_checkpoint(
    model,
    optimizer,
    scheduler,
    epoch,
    val_loss,
    val_metrics,
    hyperparameters,
    output_dir,
    prefix="emotrain",
    *,
    global_step=0,
    scaler_state=None,
    tasks=None,
    extra=None,
    model_info=None,
) -> Path:
    """Write `output_dir/checkpoints/{prefix}_{YYYYMMDD_HHMMSS}_epoch{NNN}_loss{X.XXXX}.pt` atomically;
    returns its path.

    `hyperparameters`: the resolved config (dict or DictConfig); `scaler_state`: MixedPrecisionTrainer.state_dict()
    or GradScaler.state_dict(); `tasks`: TaskSpecs (default: model.tasks); `extra`: caller state (plain types/tensors);
    `model_info`: model facts stored with the model's own (max_length, preprocess, primary_task, backbone,
    tokenizer_dir).
    """
    return _save(
        model,
        optimizer,
        scheduler,
        epoch,
        val_loss,
        val_metrics,
        hyperparameters,
        output_dir,
        prefix,
        global_step=global_step,
        scaler_state=scaler_state,
        tasks=tasks,
        extra=extra,
        model_info=model_info,
    )


def read_checkpoint(path: Path, map_location) -> dict:
    if not path.exists():
        raise CheckpointError(
            f"checkpoint not found: {path}; check the path (a .pt file, a checkpoints/ directory or a run directory)"
        )
    if not path.is_file():
        raise CheckpointError(
            f"{path}: not a file; pass a checkpoint file, a checkpoints/ directory or a run directory"
        )
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"{path}: empty file, not a checkpoint (interrupted copy?); delete it and use another checkpoint"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused by the safe loader (weights_only=True): it needs Python objects beyond tensors and "
            "plain types, "
            "so it is not an emotrain checkpoint; only if you trust its source, load it yourself and re-save with "
            "emotrain.checkpointing.save_checkpoint"
        ) from None
    except Exception as e:  # truncated zip, text file, foreign zip, ...
        reason = one_line(e).split(". ")[0][:120] or "-"
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt or not a torch file: {type(e).__name__}: "
            f"{reason}); "
            "use another checkpoint, e.g. the one checkpoints/last.json points to"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: a torch file but not an emotrain checkpoint (no '{FORMAT}' format marker); "
            "pass a file written by emotrain.checkpointing.save_checkpoint"
        )
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this emotrain supports ({FORMAT_VERSION}); "
            "upgrade emotrain"
        )
    return ckpt


def check_state_dict(path: Path, model: torch.nn.Module, state: dict) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        example = (shapes or missing or unexpected)[0]
        raise CheckpointError(
            f"{path}: weights do not match the model ({len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(shapes)} with other shapes, e.g. {example}); build the model with the checkpoint's backbone and "
            "tasks"
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


def load_checkpoint(
    path, model=None, optimizer=None, scheduler=None, scaler=None, *, map_location="cpu", restore_rng=False
) -> dict:
    """Load a checkpoint safely (weights_only=True) into the given objects; returns the whole checkpoint dict.

    `path` may also be a checkpoints/ or run directory (its last checkpoint). `scaler`: a GradScaler or a
    MixedPrecisionTrainer. `restore_rng=True` restores python/numpy/torch(/CUDA) RNG states.
    Any unusable file raises a one-line CheckpointError.
    """
    path = Path(path)
    if path.is_dir():
        path = resolve_checkpoint(path)
    ckpt = read_checkpoint(path, map_location)
    try:
        if model is not None:
            state = ckpt.get("model")
            if not isinstance(state, Mapping):
                raise CheckpointError(f"{path}: has no model weights; use a checkpoint written by save_checkpoint")
            bare = _unwrap(model)
            check_state_dict(path, bare, state)
            bare.load_state_dict(state)
        if optimizer is not None:
            if ckpt.get("optimizer") is None:
                raise CheckpointError(
                    f"{path}: has no optimizer state; resume from a checkpoint saved with an optimizer"
                )
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None:
            if ckpt.get("scheduler") is None:
                raise CheckpointError(
                    f"{path}: has no scheduler state; resume from a checkpoint saved with a scheduler"
                )
            scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None:
            _load_scaler(scaler, ckpt.get("scaler"))
    except CheckpointError:
        raise
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise CheckpointError(
            f"{path}: state does not fit the given objects ({type(e).__name__}: {one_line(e)[:200]}); "
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
    ckpt = read_checkpoint(path, "cpu")
    ckpt["extra"] = {**(ckpt.get("extra") or {}), **_storable(dict(updates))}
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
        raise CheckpointError(
            f"checkpoint not found: {path}; pass a checkpoint file, a checkpoints/ directory or a run directory"
        )
    directory = _checkpoint_dir(path)
    pointer = directory / f"{which}.json"
    if pointer.is_file():
        try:
            name = json.loads(pointer.read_text(encoding="utf-8"))["path"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(
                f"{pointer}: unreadable pointer file ({type(e).__name__}); delete it or pass a checkpoint file directly"
            ) from None
        target = directory / Path(str(name)).name
        if not target.is_file():
            raise CheckpointError(
                f"{pointer} points to {target.name}, which does not exist; pass a checkpoint file from {directory} "
                "directly"
            )
        return target
    if which == "best":
        raise CheckpointError(
            f"no best checkpoint in {directory} (no best.json; save_top_k=0 keeps only the last); use which='last' "
            "or a file"
        )
    files = sorted((p for p in directory.glob("*.pt") if p.is_file()), key=_sort_key)
    if not files:
        raise CheckpointError(f"no checkpoints in {directory}; train with checkpointing on, or pass a checkpoint file")
    return files[-1]
