"""The deployment bundle format: reading and validating ``bundle.json``.

Torch-free (standard library and numpy): the ONNX engine imports this module.

A bundle directory, written by :func:`emotrain.inference.export_bundle`::

    bundle/
      bundle.json           tasks, labels, thresholds, preprocessing, max length, checks, provenance
      model.onnx            fp32 graph: input_ids, attention_mask[, token_type_ids] -> one logits output per task
      model.int8.onnx       the same graph with dynamically quantized (int8) weights (unless quantize=false)
      tokenizer.json        fast tokenizer (loaded with tokenizers.Tokenizer.from_file)
      tokenizer_config.json (+ any other files save_pretrained writes; for transformers users)
      README.md             the model card
      config.json, model.safetensors, emotrain_heads.safetensors, emotrain_model.json
                            only with pytorch=true (PyTorch engine)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotrain.data.types import TaskSpec
from emotrain.errors import EmotrainError
from emotrain.utils import one_line

BUNDLE_FORMAT = "emotrain-bundle"
BUNDLE_FORMAT_VERSION = 1
BUNDLE_META = "bundle.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
TOKENIZER_FILE = "tokenizer.json"
# Keys of a prediction result besides the primary task's name: a task may not use them.
RESERVED_KEYS = ("tasks", "truncated")

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_META",
    "BundleError",
    "BundleInfo",
    "ExportCheckError",
    "FP32_FILE",
    "INT8_FILE",
    "TOKENIZER_FILE",
    "normalize_thresholds",
    "read_bundle",
]


class BundleError(EmotrainError):
    """A bundle (or model directory) is missing, incomplete or corrupt. One line, no traceback."""


class ExportCheckError(EmotrainError):
    """The exported ONNX model does not reproduce the PyTorch model closely enough."""


# Task definitions are the data layer's (numpy only, no torch): one format for checkpoints and bundles.


def normalize_thresholds(
    tasks: list[TaskSpec], thresholds: Any, *, where: str = "thresholds"
) -> dict[str, list[float]]:
    """{task: per-label thresholds} for every multi-label task, validated; missing tasks get 0.5.

    Raises ValueError naming the task when a list has the wrong length or a value outside [0, 1].
    Thresholds of multi-class tasks (argmax decisions) are dropped.
    """
    thresholds = thresholds or {}
    if not isinstance(thresholds, dict):
        raise ValueError(f"{where} must be an object {{task: [per-label thresholds]}}, got {type(thresholds).__name__}")
    names = {t.name for t in tasks}
    unknown = [k for k in thresholds if k not in names]
    if unknown:
        raise ValueError(f"{where}: {unknown[0]!r} is not a task; tasks are {sorted(names)}")
    out: dict[str, list[float]] = {}
    for t in tasks:
        values = thresholds.get(t.name)
        if not t.multilabel:
            if values is not None:  # argmax decides; thresholds here are a mix-up (a single-label task, or edited)
                raise ValueError(f"{where}[{t.name!r}]: {t.name!r} is single-label (argmax decides), so it takes none")
            continue
        if values is None:
            out[t.name] = [0.5] * t.num_labels
            continue
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = [float(values)] * t.num_labels
        if not isinstance(values, (list, tuple)) or len(values) != t.num_labels:
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise ValueError(f"{where}[{t.name!r}]: expected {t.num_labels} per-label values, got {got}")
        clean = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{where}[{t.name!r}]: {v!r} is not a threshold in [0, 1]")
            clean.append(float(v))
        out[t.name] = clean
    return out


@dataclass
class BundleInfo:
    """The validated contents of bundle.json plus the directory it came from."""

    path: Path
    tasks: list[TaskSpec]
    primary_task: str
    thresholds: dict[str, list[float]]
    preprocess: dict
    max_length: int
    pad_token_id: int
    tokenizer_file: str
    files: dict[str, str]
    meta: dict = field(repr=False, default_factory=dict)

    def model_file(self, quantized: bool) -> Path:
        """The ONNX file to run: fp32 by default, int8 with quantized=True (fp32 if only that exists: error)."""
        key = "int8" if quantized else "fp32"
        name = self.files.get(key)
        if name and (self.path / name).is_file():
            return self.path / name
        other = self.files.get("fp32" if quantized else "int8")
        if not quantized and other and (self.path / other).is_file():
            return self.path / other  # an int8-only bundle: use what there is
        if quantized:
            raise BundleError(
                f"{self.path}: no int8 model ({INT8_FILE}); re-export with quantize=true, or load without "
                "quantized=True"
            )
        raise BundleError(
            f"{self.path}: no ONNX model ({FP32_FILE} / {INT8_FILE}); re-export the bundle with emotrain-export"
        )


def read_bundle(path: str | Path) -> BundleInfo:
    """Read and validate ``bundle.json`` in `path`; any problem is a one-line :class:`BundleError`."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"bundle not found: {path}; pass the directory emotrain-export wrote")
    if not path.is_dir():
        raise BundleError(f"{path}: not a directory; pass the bundle directory emotrain-export wrote")
    meta_path = path / BUNDLE_META
    if not meta_path.is_file():
        raise BundleError(
            f"{path}: no {BUNDLE_META}, so not an emotrain bundle; export one with emotrain-export checkpoint=RUN_DIR"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(
            f"{meta_path}: unreadable or not JSON ({type(e).__name__}: {one_line(e, 100)}); re-export the bundle"
        ) from None
    try:
        if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"no '{BUNDLE_FORMAT}' format marker")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > BUNDLE_FORMAT_VERSION:
            raise ValueError(
                f"format version {version!r} is newer than this emotrain supports ({BUNDLE_FORMAT_VERSION}); upgrade "
                "emotrain"
            )
        tasks = [TaskSpec.from_dict(t) for t in meta["tasks"]]
        if not tasks:
            raise ValueError("lists no tasks")
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate task names {names}")
        for n in names:
            if n in RESERVED_KEYS:
                raise ValueError(f"task name {n!r} is reserved")
        primary = meta.get("primary_task") or names[0]
        if primary not in names:
            raise ValueError(f"primary_task {primary!r} is not one of the tasks {names}")
        thresholds = normalize_thresholds(tasks, meta.get("thresholds"))
        max_length = meta["max_length"]
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length {max_length!r} must be an integer >= 2")
        positions = meta.get("max_positions")  # recorded since the export checks it; older bundles lack it
        if positions is not None and (not isinstance(positions, int) or max_length > positions):
            raise ValueError(
                f"max_length {max_length} exceeds the model's {positions!r} position embeddings (max_positions)"
            )
        tok = meta.get("tokenizer") or {}
        pad_id = tok.get("pad_token_id", 0)
        if not isinstance(pad_id, int) or pad_id < 0:
            raise ValueError(f"tokenizer.pad_token_id {pad_id!r} must be a non-negative integer")
        preprocess = meta.get("preprocess") or {}
        if not isinstance(preprocess, dict):
            raise ValueError("preprocess must be an object")
        files = dict((meta.get("onnx") or {}).get("files") or {"fp32": FP32_FILE, "int8": INT8_FILE})
    except (KeyError, TypeError, ValueError) as e:
        what = f"missing key {e}" if isinstance(e, KeyError) else one_line(e, 140)
        raise BundleError(f"{meta_path}: not a valid emotrain bundle ({what}); re-export the bundle") from None
    return BundleInfo(
        path=path,
        tasks=tasks,
        primary_task=primary,
        thresholds=thresholds,
        preprocess=preprocess,
        max_length=max_length,
        pad_token_id=pad_id,
        tokenizer_file=str(tok.get("file") or TOKENIZER_FILE),
        files=files,
        meta=meta,
    )
