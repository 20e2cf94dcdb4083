"""Load a trained model (PyTorch) from whatever the user points at: used by the exporter and the PyTorch engine.

Accepted sources:

- a run directory (``checkpoints/`` inside): its best checkpoint (else the last);
- a ``checkpoints/`` directory: the same;
- a checkpoint file (``*.pt``);
- a model directory written by ``export_model`` (``emotrain_model.json`` inside): the run's ``model/``,
  or a bundle exported with ``pytorch=true``.

Decision thresholds of multi-label tasks, in this order:

- run directory: ``metrics.json["thresholds"]`` (tuned on val at the end of training), else
  ``model/emotrain_model.json``;
- model directory: its ``emotrain_model.json`` (a bundle's ``bundle.json`` wins when both exist);
- checkpoint file: the run's ``metrics.json`` when the file is its run's best checkpoint (the
  thresholds were tuned for exactly those weights), else the checkpoint's ``extra["thresholds"]``;
- otherwise 0.5 for every label.

Imports torch and transformers: never imported by the ONNX engine.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emotrain.checkpointing import CHECKPOINT_DIR, read_checkpoint, resolve_checkpoint
from emotrain.data.types import TaskSpec
from emotrain.errors import CheckpointError, EmotrainError
from emotrain.inference.bundle import BUNDLE_META, normalize_thresholds
from emotrain.inference.model_dir import EXPORT_META, export_model, load_exported_model
from emotrain.results import METRICS_FILE, RunResult
from emotrain.utils import one_line

log = logging.getLogger("emotrain.inference")


@dataclass
class ModelSource:
    """A loaded model and everything needed to serve or export it."""

    model: Any  # MultiTaskModel, eval mode
    tokenizer: Any  # transformers fast tokenizer
    meta: dict  # emotrain_model.json contents (tasks, primary_task, preprocess, max_length, git, versions, ...)
    tasks: list[TaskSpec]
    thresholds: dict[str, list[float]]
    thresholds_source: str
    checkpoint: Path | None  # the checkpoint file the weights came from (None: only an export dir)
    run_dir: Path | None
    path: Path  # what the user passed
    # The run's metrics.json when these weights are the model that run kept (its test metrics describe them).
    run_result: RunResult | None = None

    @property
    def max_length(self) -> int:
        value = self.meta.get("max_length")
        if isinstance(value, int) and value >= 2:
            return value
        limits = [
            getattr(self.tokenizer, "model_max_length", None),
            getattr(self.model.encoder.config, "max_position_embeddings", None),
        ]
        limits = [x for x in limits if isinstance(x, int) and 2 <= x <= 100_000]
        return min(limits + [512])

    @property
    def primary_task(self) -> str:
        names = [t.name for t in self.tasks]
        primary = self.meta.get("primary_task")
        return primary if primary in names else names[0]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("ignoring unreadable %s", path)
        return None
    return data if isinstance(data, dict) else None


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and ((path / CHECKPOINT_DIR).is_dir() or (path / "metrics.json").is_file())


def _run_dir_of_checkpoint(ckpt: Path) -> Path | None:
    parent = ckpt.resolve().parent
    if parent.name == CHECKPOINT_DIR:
        return parent.parent
    return None


def _kept_run_result(run_dir: Path | None) -> RunResult | None:
    """The run's result (metrics.json), for a model known to be the one that run kept; None when unreadable."""
    if run_dir is None or not (run_dir / METRICS_FILE).is_file():
        return None
    try:
        return RunResult.read(run_dir / METRICS_FILE)
    except EmotrainError as e:
        log.warning("%s; the export carries no test metrics", e)
        return None


def _run_thresholds(run_dir: Path) -> tuple[Any, str] | None:
    metrics = run_dir / METRICS_FILE
    if metrics.is_file():
        try:
            return RunResult.read(metrics).thresholds, str(metrics)
        except EmotrainError:  # unreadable: fall back to the model export's copy
            pass
    meta = run_dir / "model" / EXPORT_META
    if meta.is_file():
        data = _read_json(meta)
        if data is not None and data.get("thresholds") is not None:
            return data["thresholds"], str(meta)
    return None


def _is_best_checkpoint(ckpt: Path, run_dir: Path) -> bool:
    try:
        best = resolve_checkpoint(run_dir, "best")
    except CheckpointError:
        return False
    return best.resolve() == ckpt.resolve()


def _load_backbone_tokenizer(raw: dict, ckpt: Path):
    """The training tokenizer of a bare checkpoint: the directory its model_info names, else (checkpoints written
    before model_info had it) its saved backbone config."""
    from omegaconf import OmegaConf

    from emotrain.models.backbones import load_tokenizer

    tokenizer_dir = (raw.get("model_info") or {}).get("tokenizer_dir")
    if tokenizer_dir and Path(tokenizer_dir).is_dir():
        return _load_tokenizer_dir(Path(tokenizer_dir))
    hyperparameters = raw.get("hyperparameters") or {}
    backbone = (hyperparameters or {}).get("backbone")
    root = ((hyperparameters or {}).get("paths") or {}).get("root_dir") or "."
    if not isinstance(backbone, dict):
        raise CheckpointError(
            f"{ckpt}: has no backbone config to find its tokenizer; pass tokenizer=DIR (e.g. the run's model/ "
            "directory)"
        )
    try:
        return load_tokenizer(OmegaConf.create(backbone), Path(root))
    except Exception as e:  # ConfigError, OSError, ...
        raise CheckpointError(
            f"{ckpt}: cannot load the tokenizer of backbone {backbone.get('name')!r} ({type(e).__name__}: "
            f"{one_line(e, 100)}); "
            "pass tokenizer=DIR (e.g. the run's model/ directory)"
        ) from None


def _load_tokenizer_dir(directory: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{directory}: cannot load a tokenizer from it ({type(e).__name__}: {one_line(e, 100)})"
        ) from None


def load_source(path, *, which: str = "best", tokenizer: str | Path | None = None) -> ModelSource:
    """Load the model `path` points to (see the module docstring) in eval mode on the CPU."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"not found: {path}; pass a run directory, a checkpoint file or a model/bundle directory")
    if path.is_dir() and (path / EXPORT_META).is_file():
        return _from_export_dir(path, tokenizer)
    run_dir: Path | None = None
    if path.is_dir():
        run_dir = path if _is_run_dir(path) else (path.parent if path.name == CHECKPOINT_DIR else None)
        if (path / "bundle.json").is_file() and not (path / CHECKPOINT_DIR).is_dir():
            raise CheckpointError(
                f"{path}: a bundle without PyTorch weights; pass the run directory or checkpoint, or re-export with "
                "pytorch=true"
            )
        try:
            ckpt = resolve_checkpoint(path, which)
        except CheckpointError:
            if which != "best":
                raise
            ckpt = resolve_checkpoint(path, "last")
            log.warning("%s: no best checkpoint, using the last one (%s)", path, ckpt.name)
        if run_dir is None and _is_run_dir(ckpt.parent.parent):
            run_dir = ckpt.parent.parent
    else:
        ckpt = path
    raw = read_checkpoint(ckpt, "cpu")
    ckpt_run = run_dir or _run_dir_of_checkpoint(ckpt)
    specs = [TaskSpec.from_dict(t) for t in raw.get("tasks") or []]
    if not specs:
        raise CheckpointError(f"{ckpt}: lists no tasks; use a checkpoint written by emotrain training")
    # Thresholds.
    found = None
    kept = ckpt_run is not None and ((path.is_dir() and which == "best") or _is_best_checkpoint(ckpt, ckpt_run))
    if kept:
        found = _run_thresholds(ckpt_run)
    if found is None and (raw.get("extra") or {}).get("thresholds") is not None:
        found = (raw["extra"]["thresholds"], f"{ckpt.name}: extra['thresholds']")
    thresholds, source = _thresholds(specs, found)
    # Tokenizer: given, the run's model/ export, or the backbone's.
    if tokenizer is not None:
        tok = _load_tokenizer_dir(Path(tokenizer))
    elif ckpt_run is not None and (ckpt_run / "model" / "tokenizer_config.json").is_file():
        tok = _load_tokenizer_dir(ckpt_run / "model")
    else:
        tok = _load_backbone_tokenizer(raw, ckpt)
    del raw
    # Build the model through a temporary slim export: one validated code path for both.
    tmp = Path(tempfile.mkdtemp(prefix="emotrain-source-"))
    quiet = logging.getLogger("emotrain.checkpointing")
    level = quiet.level
    quiet.setLevel(logging.WARNING)  # "exported ... to /tmp/..." is noise here
    try:
        export_model(ckpt, tmp / "model", tok, thresholds=thresholds)
        model, _, meta = load_exported_model(tmp / "model")
    finally:
        quiet.setLevel(level)
        shutil.rmtree(tmp, ignore_errors=True)
    tasks = [TaskSpec.from_dict(t) for t in meta["tasks"]]
    result = _kept_run_result(ckpt_run) if kept else None
    return ModelSource(model, tok, meta, tasks, thresholds, source, ckpt.resolve(), ckpt_run, path, result)


def _thresholds(tasks: list[TaskSpec], found: tuple[Any, str] | None) -> tuple[dict, str]:
    if not any(t.multilabel for t in tasks):
        return {}, "none (no multi-label task)"
    if found is None:
        return normalize_thresholds(tasks, None), "default 0.5"
    values, where = found
    try:
        return normalize_thresholds(tasks, values, where=where), where
    except ValueError as e:
        raise CheckpointError(f"{e}; fix or delete it (thresholds then default to 0.5)") from None


def _from_export_dir(directory: Path, tokenizer) -> ModelSource:
    model, tok, meta = load_exported_model(directory)
    if tokenizer is not None:
        tok = _load_tokenizer_dir(Path(tokenizer))
    tasks = [TaskSpec.from_dict(t) for t in meta["tasks"]]
    found = None
    bundle_meta = directory / BUNDLE_META
    if bundle_meta.is_file():
        data = _read_json(bundle_meta)
        if data is not None and data.get("thresholds") is not None:
            found = (data["thresholds"], str(bundle_meta))
    if found is None and meta.get("thresholds") is not None:
        found = (meta["thresholds"], str(directory / EXPORT_META))
    thresholds, source = _thresholds(tasks, found)
    src = meta.get("source_checkpoint")
    ckpt = Path(src) if src else None
    run_dir = directory.parent if _is_run_dir(directory.parent) else None
    result = _kept_run_result(run_dir)
    if result is not None and (not result.model_dir or Path(result.model_dir).resolve() != directory.resolve()):
        result = None  # not the model/ that run kept
    return ModelSource(model, tok, meta, tasks, thresholds, source, ckpt, run_dir, directory, result)
