"""Entry point of the data layer: the composed `cfg.data` node -> DataBundle.

Dispatches on `data.kind` (sample | goemotions | table), then applies what is common
to every kind: the primary task and the quick-run row caps. Text preprocessing is not
done here. Nothing in the data layer imports torch.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from emotrain.config import GROUP_SCHEMAS, check_range, check_seed
from emotrain.data.goemotions import load_goemotions
from emotrain.data.readers import resolve_path
from emotrain.data.sample import load_sample
from emotrain.data.table import load_table
from emotrain.data.types import DataBundle, Split
from emotrain.errors import DataError

DATA_SCHEMAS: dict[str, type] = GROUP_SCHEMAS["data"]  # kind -> schema


def _data_config(data_cfg: Any) -> DictConfig:
    """Any of DictConfig / dict / dataclass -> a DictConfig with the kind's schema defaults.

    Interpolations are resolved first, while the node is still attached to its root
    (e.g. ${paths.root_dir}); a plain dict in a test gets every default filled in.
    """
    if isinstance(data_cfg, DictConfig):
        plain = OmegaConf.to_container(data_cfg, resolve=True)
    elif dataclasses.is_dataclass(data_cfg):
        plain = OmegaConf.to_container(OmegaConf.structured(data_cfg))
    else:
        plain = dict(data_cfg)
    kind = plain.get("kind")
    if kind not in DATA_SCHEMAS:
        raise DataError(f"data.kind={kind!r} is not known; use one of {', '.join(DATA_SCHEMAS)} (e.g. data=sample)")
    try:
        return OmegaConf.merge(OmegaConf.structured(DATA_SCHEMAS[kind]), plain)
    except OmegaConfBaseException as exc:
        raise DataError(f"data config: {str(exc).splitlines()[0]}") from None


def validate_data_config(data_cfg: Any) -> None:
    """data.* keys common to every data option, before any file is read."""
    for key in ("val_fraction", "test_fraction"):
        check_range(f"data.{key}", data_cfg[key], ge=0, lt=1)
    if data_cfg.val_fraction + data_cfg.test_fraction >= 1.0:
        raise DataError(
            f"data.val_fraction + data.test_fraction = {data_cfg.val_fraction + data_cfg.test_fraction:g} leaves no "
            "training rows; lower them"
        )
    check_seed("data.split_seed", data_cfg.split_seed)
    for key in ("max_train_examples", "max_eval_examples"):
        check_range(f"data.{key}", data_cfg[key], ge=1, integer=True, optional=True)


def _required(cfg: DictConfig, key: str, example: str) -> Any:
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise DataError(f"data.{key} is not set; pass e.g. data.{key}={example}")
    return cfg.get(key)


def _cap(split: Split, limit: int | None, key: str) -> Split:
    """The first `limit` rows (deterministic, keeps file order)."""
    if limit is None:
        return split
    limit = int(limit)  # >= 1: validate_data_config
    if limit >= len(split):
        return split
    return split.subset(np.arange(limit))


def load_data(data_cfg: Any, root_dir: Path) -> DataBundle:
    """Load the data set `data_cfg` (the `cfg.data` node) describes; relative paths
    resolve against `root_dir`, the launch directory."""
    cfg = _data_config(data_cfg)
    validate_data_config(cfg)
    root_dir = Path(root_dir)
    kind = cfg.kind
    if kind == "sample":
        bundle = load_sample()
    elif kind == "goemotions":
        data_dir = resolve_path(_required(cfg, "dir", "../shared/data/goemotions"), root_dir)
        bundle = load_goemotions(data_dir, tasks=list(cfg.tasks))
    else:
        _required(cfg, "train_file", "train.csv")
        bundle = load_table(cfg, root_dir)

    names = [t.name for t in bundle.tasks]
    primary = cfg.get("primary_task")
    if primary:
        if primary not in names:
            raise DataError(
                f"data.primary_task={primary!r} names no task; tasks are {', '.join(names)} (set data.primary_task "
                "to one)"
            )
        bundle.primary_task = str(primary)
    else:
        bundle.primary_task = names[0]

    bundle.train = _cap(bundle.train, cfg.max_train_examples, "max_train_examples")
    bundle.val = _cap(bundle.val, cfg.max_eval_examples, "max_eval_examples")
    if bundle.test is not None:
        bundle.test = _cap(bundle.test, cfg.max_eval_examples, "max_eval_examples")
    check_learnable(bundle)
    return bundle


def check_learnable(bundle: DataBundle) -> None:
    """Refuse a training split that gives a task nothing to tell apart: one class in every row
    (multi-class), or every label on in all rows or off in all rows (multi-label)."""
    where = bundle.sources.get("train", "the training split")
    n = len(bundle.train)
    if n > 1 and len(set(bundle.train.texts)) == 1:
        raise DataError(
            f"{where}: all {n} training texts are the same text, so there is nothing to tell apart; check the text "
            "column (data.text_column) and the file"
        )
    for task in bundle.tasks:
        y = np.asarray(bundle.train.targets[task.name])
        if task.multilabel:
            positives = y.sum(axis=0)
            if not ((positives > 0) & (positives < n)).any():
                state = "on" if (positives == n).all() else "off" if (positives == 0).all() else "on or off"
                raise DataError(
                    f"{where}: task {task.name!r} has every label {state} in all {n} training rows, so there is "
                    "nothing to learn; "
                    "check the label column (data.tasks.<name>.column) and the file"
                )
        else:
            present = np.unique(y)
            if len(present) < 2:
                raise DataError(
                    f"{where}: task {task.name!r} has a single class in the training split "
                    f"({task.labels[int(present[0])]!r} in "
                    f"all {n} rows); a classifier needs examples of at least 2 classes: check the label column and "
                    "the file"
                )


__all__ = ["load_data"]
