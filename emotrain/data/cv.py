"""Validation protocol: holdout (the dataset's own val split) or one fold of k-fold. Reads conf/cv/."""

from __future__ import annotations

import logging

from emotrain.data.splitting import kfold_indices
from emotrain.data.types import DataBundle, Split

log = logging.getLogger(__name__)


def concat_splits(a: Split, b: Split) -> Split:
    import numpy as np

    return Split(texts=a.texts + b.texts, targets={k: np.concatenate([a.targets[k], b.targets[k]]) for k in a.targets}, name=f"{a.name}+{b.name}")


def apply_cv(bundle: DataBundle, cv_cfg) -> DataBundle:
    """For k-fold, the fold's held-out part of the pool becomes the validation split; test is untouched."""
    kind = str(getattr(cv_cfg.kind, "value", cv_cfg.kind))
    if kind == "holdout":
        return bundle
    pool = concat_splits(bundle.train, bundle.val) if cv_cfg.include_val else bundle.train
    task = bundle.task(bundle.primary_task) if bundle.primary_task else bundle.tasks[0]
    train_idx, val_idx = kfold_indices(pool, task, cv_cfg.k, cv_cfg.fold, cv_cfg.seed, cv_cfg.stratified)
    bundle.train = pool.subset(train_idx)
    bundle.train.name = "train"
    bundle.val = pool.subset(val_idx)
    bundle.val.name = f"fold{cv_cfg.fold}"
    bundle.sources["cv"] = f"fold {cv_cfg.fold} of {cv_cfg.k} (seed {cv_cfg.seed}, stratified={cv_cfg.stratified}, include_val={cv_cfg.include_val})"
    log.info("cv: %s; train=%d val=%d", bundle.sources["cv"], len(bundle.train), len(bundle.val))
    return bundle
