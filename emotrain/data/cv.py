"""Validation protocol: holdout (the dataset's own val split) or one fold of k-fold. Reads conf/cv/."""

from __future__ import annotations

import logging

from emotrain.config import check_range, check_seed, choice
from emotrain.data.splitting import kfold_indices
from emotrain.data.types import DataBundle, Split
from emotrain.errors import ConfigError

log = logging.getLogger(__name__)


def concat_splits(a: Split, b: Split) -> Split:
    import numpy as np

    return Split(
        texts=a.texts + b.texts,
        targets={k: np.concatenate([a.targets[k], b.targets[k]]) for k in a.targets},
        name=f"{a.name}+{b.name}",
        ids=a.ids + b.ids if a.ids is not None and b.ids is not None else None,
    )


def validate_cv_config(cv_cfg) -> None:
    """cv=kfold: k >= 2, fold in 0..k-1, a valid split seed (cv=holdout has no keys)."""
    if _kind(cv_cfg) != "kfold":
        return
    check_range("cv.k", cv_cfg.k, integer=True)
    if cv_cfg.k < 2:
        raise ConfigError(f"cv.k={cv_cfg.k}: k-fold needs k >= 2")
    if not 0 <= cv_cfg.fold < cv_cfg.k:
        raise ConfigError(f"cv.fold={cv_cfg.fold}: must be in [0, {cv_cfg.k}) for cv.k={cv_cfg.k}")
    check_seed("cv.seed", cv_cfg.seed)


def _kind(cv_cfg) -> str:
    return choice(cv_cfg.kind)


def _pool(bundle: DataBundle, cv_cfg) -> Split:
    return concat_splits(bundle.train, bundle.val) if cv_cfg.include_val else bundle.train


def kfold_split(bundle: DataBundle, cv_cfg) -> dict | None:
    """The fold's split of the training pool (None for holdout), JSON-ready for the run dir.

    Keys: k, fold, seed, stratified, include_val, stratify_on, pool ("train" or
    "train+val": the training split, then the validation split, as loaded), pool_size,
    train_indices and val_indices (sorted row indices into the pool; val = held out).
    Every fold of one k / seed / pool partitions the pool: the val_indices of folds
    0..k-1 are disjoint and cover it. The test split is never part of the pool.
    """
    if _kind(cv_cfg) == "holdout":
        return None
    pool = _pool(bundle, cv_cfg)
    task = bundle.task(bundle.primary_task) if bundle.primary_task else bundle.tasks[0]
    train_idx, val_idx = kfold_indices(pool, task, cv_cfg.k, cv_cfg.fold, cv_cfg.seed, cv_cfg.stratified)
    return {
        "k": int(cv_cfg.k),
        "fold": int(cv_cfg.fold),
        "seed": int(cv_cfg.seed),
        "stratified": bool(cv_cfg.stratified),
        "include_val": bool(cv_cfg.include_val),
        "stratify_on": task.name if cv_cfg.stratified else None,
        "pool": "train+val" if cv_cfg.include_val else "train",
        "pool_size": len(pool),
        "train_indices": train_idx.tolist(),
        "val_indices": val_idx.tolist(),
    }


def apply_cv(bundle: DataBundle, cv_cfg, split: dict | None = None) -> DataBundle:
    """For k-fold, the fold's held-out part of the pool becomes the validation split; test is untouched.

    `split` is kfold_split(bundle, cv_cfg) when the caller already computed it (to record it).
    """
    if _kind(cv_cfg) == "holdout":
        return bundle
    split = split if split is not None else kfold_split(bundle, cv_cfg)
    pool = _pool(bundle, cv_cfg)
    bundle.train = pool.subset(split["train_indices"])
    bundle.train.name = "train"
    bundle.val = pool.subset(split["val_indices"])
    bundle.val.name = f"fold{cv_cfg.fold}"
    bundle.sources["cv"] = (
        f"fold {cv_cfg.fold} of {cv_cfg.k} (seed {cv_cfg.seed}, stratified={cv_cfg.stratified}, "
        f"include_val={cv_cfg.include_val})"
    )
    log.info("cv: %s; train=%d val=%d", bundle.sources["cv"], len(bundle.train), len(bundle.val))
    return bundle
