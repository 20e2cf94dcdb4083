"""Structured-config schemas for every config group, registered in Hydra's ConfigStore.

Each YAML file under ``conf/<group>/`` names its schema first in its defaults list
(``- /schema_<group>_<kind>@_here_``), so a typo'd key, a wrong type or an unknown
enum value fails at compose time, before any data is read or model built. The
schemas are stored outside any group so they do not show up as options.

Adding an option to a group is a one-file change: a new YAML in ``conf/<group>/``
that extends one of the schemas below.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from emotrain.errors import ConfigError

# --------------------------------------------------------------------------- helpers


SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
INT_MAX = 2**31 - 1  # every integer key's ceiling unless its owner sets one: counts reach C ints (threads, steps)


def _bound_text(low, low_open: bool, high, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    return f"{'<' if high_open else '<='} {high}"


def check_range(
    key: str, value, *, ge=None, gt=None, le=None, lt=None, integer: bool = False, optional: bool = False
) -> None:
    """ConfigError naming `key` unless `value` is a finite number within the bounds (None allowed when `optional`).

    The owner of each config group calls this for its numeric keys before any work; the message
    states the valid range: `optim.lr=nan: must be a finite number > 0`.
    """
    if value is None and optional:
        return
    low, low_open = (gt, True) if gt is not None else (ge, False)
    high, high_open = (lt, True) if lt is not None else (le, False)
    bounds = _bound_text(low, low_open, high, high_open) if (low is not None or high is not None) else ""
    what = "an integer" if integer else "a finite number"
    expected = f"{what} {bounds}".strip() + (" or null" if optional else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r}: must be {expected}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value}: must be {expected}")
    if (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and (value >= high if high_open else value > high)
    ):
        raise ConfigError(f"{key}={value}: must be {bounds}" + (" or null" if optional else ""))
    if integer and high is None and value > INT_MAX:
        raise ConfigError(f"{key}={value}: must be at most {INT_MAX}")


def check_seed(key: str, seed) -> None:
    """A seed numpy, torch and Python all accept: an integer in [0, 2**32 - 1]."""
    check_range(key, seed, ge=0, le=SEED_MAX, integer=True)


def choice(value) -> str:
    """A config choice as a plain string: enum members (structured configs) give their value."""
    return str(getattr(value, "value", value))


def flatten_dict(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}, "e": {}} -> {"a.b": 1, "e": {}}: dotted keys; lists and empty dicts stay values."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten_dict(v, key))
        else:
            out[key] = v
    return out


# --------------------------------------------------------------------------- enums


class Pooling(str, Enum):
    mean = "mean"
    cls = "cls"


class Attention(str, Enum):
    auto = "auto"  # eager on CPU, sdpa on GPU (see models/backbones.resolve_attention)
    eager = "eager"
    sdpa = "sdpa"


class FreezeMode(str, Enum):
    none = "none"
    partial = "partial"
    full = "full"
    progressive = "progressive"


class LossKind(str, Enum):
    default = "default"
    focal = "focal"


class TaskWeighting(str, Enum):
    fixed = "fixed"
    uncertainty = "uncertainty"


class LabelReduction(str, Enum):
    mean = "mean"
    sum = "sum"


class SchedulerKind(str, Enum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"
    cosine_restarts = "cosine_restarts"


class PrecisionMode(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class CVKind(str, Enum):
    holdout = "holdout"
    kfold = "kfold"


class MonitorMode(str, Enum):
    min = "min"
    max = "max"


# --------------------------------------------------------------------------- data


@dataclass
class PreprocessConfig:
    normalize_unicode: bool = True  # NFKC
    clean_whitespace: bool = True
    lowercase: bool = False
    scrub_pii: bool = True


@dataclass
class DataConfig:
    kind: str = MISSING
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    # Task whose label is the top-level prediction and the default objective.
    primary_task: Optional[str] = None
    # Seeded stratified split of the training file when no val/test split exists.
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 42
    # Caps for quick runs and tests (first N rows of each split after loading).
    max_train_examples: Optional[int] = None
    max_eval_examples: Optional[int] = None


@dataclass
class SampleDataConfig(DataConfig):
    kind: str = "sample"


@dataclass
class GoEmotionsDataConfig(DataConfig):
    kind: str = "goemotions"
    dir: str = MISSING
    tasks: List[str] = field(default_factory=lambda: ["emotion", "ekman", "sentiment"])


@dataclass
class TableTaskConfig:
    column: str = MISSING  # column name, or 0-based position when the file has no header
    multilabel: bool = False
    delimiter: str = ","  # splits multi-label cells
    # Label names in id order. Required when cells hold integer ids; otherwise the
    # label set is taken from the training split (sorted) unless listed here.
    labels: Optional[List[str]] = None
    ids: bool = False  # cells hold integer ids into `labels` (or, unlabelled, the ids seen in training)


@dataclass
class TableDataConfig(DataConfig):
    kind: str = "table"
    train_file: str = MISSING
    val_file: Optional[str] = None
    test_file: Optional[str] = None
    format: str = "auto"  # auto (from extension) | csv | tsv | jsonl | parquet
    sep: Optional[str] = None  # any single character; default from format
    header: bool = True
    encoding: str = "utf-8"
    text_column: str = "text"  # name, or 0-based position when header=false
    # {task name: TableTaskConfig fields}. Typed Any because Hydra cannot create typed
    # dict entries from `+data.tasks.emotion.column=label`; the table reader validates
    # each entry against TableTaskConfig instead.
    tasks: Dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- model


@dataclass
class BackboneConfig:
    """backbone=minilm, and the keys every backbone option has."""

    kind: str = MISSING  # minilm | tiny | local | hf
    name: str = MISSING  # the hub id (hf) or a human-readable id, recorded in reports, model cards and cache keys
    pooling: Pooling = Pooling.mean
    max_length: int = 128
    attention: Attention = Attention.auto  # attention kernel; same maths, different speed


@dataclass
class TinyBackboneConfig(BackboneConfig):
    """backbone=tiny: a randomly initialised BERT built from these sizes (MiniLM's tokenizer)."""

    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 64


@dataclass
class LocalBackboneConfig(BackboneConfig):
    """backbone=local: any local Hugging Face model directory."""

    path: str = MISSING


@dataclass
class HubBackboneConfig(BackboneConfig):
    """backbone=hf: an encoder in the local Hugging Face cache by its hub id (offline; never downloads)."""

    revision: str = "main"  # a branch, tag or commit hash present in the cache


# --------------------------------------------------------------------------- training


@dataclass
class FreezeConfig:
    """freeze=none, and the key every freeze option has."""

    mode: FreezeMode = FreezeMode.none


@dataclass
class PartialFreezeConfig(FreezeConfig):
    layers: int = 0  # embeddings + the first `layers` encoder layers


@dataclass
class ProgressiveFreezeConfig(FreezeConfig):
    every: int = 1  # unfreeze one more layer (from the top) every N epochs


@dataclass
class FullFreezeConfig(FreezeConfig):
    # Compute each text's pooled encoder output once and cache it on disk
    # (paths.cache_dir/features), so epochs, folds and sweep jobs train only the heads.
    feature_cache: bool = True


@dataclass
class LossConfig:
    """loss=default (cross-entropy / BCE), and the keys every loss option has."""

    kind: LossKind = LossKind.default
    class_weights: Any = None  # null | "balanced" | list (single task) | {task: list}
    label_smoothing: float = 0.0  # multi-class tasks only
    task_weighting: TaskWeighting = TaskWeighting.fixed
    task_weights: Dict[str, float] = field(default_factory=dict)  # fixed weights, default 1.0
    # Multi-label tasks: average each example's per-label losses (mean, the usual BCE) or add
    # them (sum), so every label weighs the same whatever its task's label count.
    label_reduction: LabelReduction = LabelReduction.mean


@dataclass
class FocalLossConfig(LossConfig):
    kind: LossKind = LossKind.focal
    gamma: float = 2.0  # [0, 10]
    alpha: Any = None  # null, a scalar, or a per-class list (per task: {task: list})


@dataclass
class SchedulerConfig:
    """scheduler=linear|cosine|constant, and the keys every schedule has."""

    kind: SchedulerKind = SchedulerKind.cosine
    warmup_ratio: float = 0.1
    warmup_steps: Optional[int] = None  # overrides warmup_ratio when set


@dataclass
class RestartsSchedulerConfig(SchedulerConfig):
    kind: SchedulerKind = SchedulerKind.cosine_restarts
    num_cycles: int = 2


@dataclass
class PrecisionConfig:
    mode: PrecisionMode = PrecisionMode.auto


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-4
    head_lr: Optional[float] = None  # defaults to lr
    weight_decay: float = 0.01  # [0, 1]
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8  # (0, 1]
    fused: bool = True  # torch's fused AdamW kernel where the device supports it
    layer_decay: float = 1.0  # layer-wise lr decay; 1.0 = off


@dataclass
class EarlyStoppingConfig:
    patience: Optional[int] = None  # null = off
    min_delta: float = 0.0


@dataclass
class TrainerConfig:
    epochs: int = 6
    batch_size: int = 32
    eval_batch_size: int = 64
    max_steps: Optional[int] = None  # stop after this many optimiser steps (quick runs)
    grad_accum_steps: int = 1
    max_grad_norm: Optional[float] = 1.0
    dropout: float = 0.1
    monitor: str = "loss"  # validation metric for best epoch, early stopping, objective
    monitor_mode: MonitorMode = MonitorMode.min
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    eval_every_steps: Optional[int] = None  # null = once per epoch
    length_grouping: bool = True  # batches of similar length (less padding)
    token_cache: bool = True  # token ids cached on disk (paths.cache_dir/tokens)
    compact_embeddings: bool = True  # only word-embedding rows of training tokens train; exact (models/embeddings.py)
    num_threads: Optional[int] = None  # torch intra-op threads; null = torch default
    progress: bool = True  # tqdm bars
    log_every_steps: int = 50
    max_nonfinite_steps: int = 10  # consecutive non-finite losses before training stops
    # Multi-label decisions: per-label thresholds tuned on val after training (maximising
    # each label's F1, never below threshold_floor), unless `threshold` fixes one for all.
    tune_thresholds: bool = True
    threshold_floor: float = 0.05
    threshold: Optional[float] = None


@dataclass
class CVConfig:
    """cv=holdout: the dataset's own validation split (or a seeded split of the training file)."""

    kind: CVKind = CVKind.holdout


@dataclass
class KFoldConfig(CVConfig):
    kind: CVKind = CVKind.kfold
    k: int = 5
    fold: int = 0
    seed: int = 42  # split seed, separate from the training seed
    stratified: bool = True
    include_val: bool = False  # fold over train + validation


@dataclass
class CheckpointConfig:
    enabled: bool = True
    prefix: str = "emotrain"
    save_top_k: int = 1  # best k by trainer.monitor, plus the last epoch always; -1 keeps all
    export: bool = True  # slim weights-only export of the best model into <run>/model/


@dataclass
class LoggerConfig:
    """logger=none: everything stays in the run directory."""

    kind: str = "none"  # none | mlflow


@dataclass
class MLflowLoggerConfig(LoggerConfig):
    kind: str = "mlflow"
    tracking_uri: Optional[str] = None  # mlflow: default a local store in the launch directory
    experiment: str = "emotrain"
    run_name: Optional[str] = None  # default: the run directory's name
    log_artifacts: bool = True


@dataclass
class PathsConfig:
    root_dir: str = MISSING
    output_dir: str = MISSING
    cache_dir: str = MISSING


@dataclass
class TrainConfig:
    paths: PathsConfig = MISSING
    data: DataConfig = MISSING
    backbone: BackboneConfig = MISSING
    freeze: FreezeConfig = MISSING
    loss: LossConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    precision: PrecisionConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: TrainerConfig = MISSING
    cv: CVConfig = MISSING
    checkpoint: CheckpointConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 42
    deterministic: bool = False
    resume: Optional[str] = None  # a checkpoint file, or a run directory (its last checkpoint)
    report: bool = True  # plots, report.json and summary.txt in <run>/report/


# Schemas per group and option. conf/<group>/<option>.yaml starts with
# `defaults: [/schema_<group>_<option>@_here_]` when its option has keys of its own, else with
# `/schema_<group>_base@_here_`: so `--cfg job` shows only the keys that act on the chosen option,
# and a key of another option (backbone.hidden_size with backbone=minilm) is refused.
GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "paths": {"base": PathsConfig},
    "data": {"sample": SampleDataConfig, "goemotions": GoEmotionsDataConfig, "table": TableDataConfig},
    "backbone": {
        "base": BackboneConfig,
        "tiny": TinyBackboneConfig,
        "local": LocalBackboneConfig,
        "hf": HubBackboneConfig,
    },
    "freeze": {
        "base": FreezeConfig,
        "partial": PartialFreezeConfig,
        "progressive": ProgressiveFreezeConfig,
        "full": FullFreezeConfig,
    },
    "loss": {"base": LossConfig, "focal": FocalLossConfig},
    "scheduler": {"base": SchedulerConfig, "cosine_restarts": RestartsSchedulerConfig},
    "precision": {"base": PrecisionConfig},
    "optim": {"base": OptimConfig},
    "trainer": {"base": TrainerConfig},
    "cv": {"base": CVConfig, "kfold": KFoldConfig},
    "checkpoint": {"base": CheckpointConfig},
    "logger": {"base": LoggerConfig, "mlflow": MLflowLoggerConfig},
}


def schema_for(group: str, option: str) -> type:
    """The schema of `group=option` (its own, or the group's base schema)."""
    schemas = GROUP_SCHEMAS[group]
    return schemas.get(option) or schemas["base"]


def _field_names(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _options_with_key(group: str, key: str) -> list[str]:
    """The options of `group` whose own schema has `key` (backbone, hidden_size -> [tiny])."""
    return [
        option
        for option, schema in GROUP_SCHEMAS.get(group, {}).items()
        if option != "base" and key in _field_names(schema)
    ]


def unknown_key_message(full_key: str, schema: type) -> str:
    """One line for a key that `schema` (the node at its parent) does not have: the options that
    have it, or the closest valid key (of this option, else of another option of the group)."""
    parent, _, key = full_key.rpartition(".")
    group = full_key.split(".")[0]
    prefix = f"{parent}." if parent else ""
    top_level = parent == group  # group-level keys differ per option; nested nodes do not
    if top_level and (options := _options_with_key(group, key)):
        choices = " or ".join(f"{group}={o}" for o in options)
        return f"{full_key}: the chosen {group} option has no such key; it acts only with {choices}"
    names = _field_names(schema)
    if close := difflib.get_close_matches(key, names, n=1, cutoff=0.6):
        return f"{full_key}: no such key; did you mean {prefix}{close[0]}?"
    others = (
        sorted({n for s in GROUP_SCHEMAS.get(group, {}).values() for n in _field_names(s)} - set(names))
        if top_level
        else []
    )
    if close := difflib.get_close_matches(key, others, n=1, cutoff=0.6):
        options = " or ".join(f"{group}={o}" for o in _options_with_key(group, close[0]))
        return f"{full_key}: no such key; did you mean {prefix}{close[0]} (it acts only with {options})?"
    return f"{full_key}: no such key; {parent or 'the top level'} has {', '.join(names)}"


def _check_node_keys(node: DictConfig, path: str) -> None:
    schema = OmegaConf.get_type(node)
    if not dataclasses.is_dataclass(schema):  # an open map (data.tasks, loss.task_weights): any key
        return
    names = set(_field_names(schema))
    for key in node.keys():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            raise ConfigError(unknown_key_message(full, schema))
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _check_node_keys(child, full)


def check_config_keys(cfg: DictConfig) -> None:
    """Refuse keys that no schema defines (a typo added with `+trainer.epoch=1`) and an option
    selector that names another option than the one composed (`loss.kind=focal` under loss=default).

    Hydra refuses unknown keys in plain overrides itself; `+key=value` bypasses that, so this runs
    on the composed config before any work (the CLI and `emotrain.train`).
    """
    _check_node_keys(cfg, "")
    for group, schemas in GROUP_SCHEMAS.items():
        node = cfg.get(group) if group in cfg else None
        if not isinstance(node, DictConfig):
            continue
        selector = next((k for k in ("kind", "mode") if k in node), None)
        if selector is None:
            continue
        value = choice(node[selector])
        expected = schemas.get(value) or schemas.get("base")
        if expected is None:
            raise ConfigError(
                f"{group}.{selector}={value!r} is not known; use one of {', '.join(schemas)} (e.g. "
                f"{group}={next(iter(schemas))})"
            )
        if expected is not OmegaConf.get_type(node):
            raise ConfigError(
                f"{group}.{selector}={value}: the composed {group} option has other keys; choose the option itself "
                f"with {group}={value}"
            )


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="schema_train", node=TrainConfig)
    for group, schemas in GROUP_SCHEMAS.items():
        for name, node in schemas.items():
            # Stored outside any group so they do not show up as options in --help.
            cs.store(name=f"schema_{group}_{name}", node=node)


register_configs()
