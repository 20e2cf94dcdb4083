"""Seeded, stratified splits of one Split: a hold-out (val/test carved from a training
file) and k-fold cross-validation indices.

Stratification follows one task's targets: multi-class targets (int64 [n]) go through
scikit-learn's stratified splitters; multi-label targets (float32 multi-hot [n, L])
through iterative stratification (iterstrat), which keeps every label's share close to
the whole set's. Classes too small to be spread over the requested parts are reported
as a DataError before any splitter sees them, since the splitters' own messages name
neither the class nor the setting to change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from emotrain.data.types import Split, TaskSpec
from emotrain.errors import DataError
from emotrain.pii import scrub_pii


def _targets(split: Split, task: TaskSpec | str) -> tuple[str, tuple[str, ...] | None, np.ndarray]:
    name = task.name if isinstance(task, TaskSpec) else str(task)
    if name not in split.targets:
        raise DataError(f"cannot stratify on task {name!r}: the split has tasks {', '.join(split.targets)}")
    labels = task.labels if isinstance(task, TaskSpec) else None
    return name, labels, np.asarray(split.targets[name])


def class_counts(y: np.ndarray, num_labels: int | None = None) -> np.ndarray:
    """Examples per class: bincount of class ids, or positives per label of a multi-hot matrix."""
    if y.ndim == 2:
        return (y > 0).sum(axis=0).astype(np.int64)
    return np.bincount(y.astype(np.int64), minlength=num_labels or 0)


def _single_column(y: np.ndarray) -> np.ndarray | None:
    """1-D labels that sklearn's stratifiers take, or None for a real multi-label matrix."""
    if y.ndim == 1:
        return y.astype(np.int64)
    if y.shape[1] == 1:  # one-label multi-label task: stratify on the binary column
        return (y[:, 0] > 0).astype(np.int64)
    return None


def _label_repr(label: str) -> str:
    """A label as quoted in an error message; PII masked, in case a text column was taken for labels."""
    shown = repr(scrub_pii(str(label)))
    return shown if len(shown) <= 60 else shown[:60] + "..."


def _check_min_count(
    task_name: str,
    labels: tuple[str, ...] | None,
    counts: np.ndarray,
    minimum: int,
    source: str,
    need: str,
    remedy: str,
) -> None:
    # Absent classes (0) are fine: they cannot end up on the wrong side.
    small = [(int(c), i) for i, c in enumerate(counts) if 0 < c < minimum]
    if not small:
        return
    count, i = min(small)
    label = labels[i] if labels is not None and i < len(labels) else str(i)
    where = f" in {source}" if source else ""
    present = int(np.count_nonzero(counts))
    singles = int(np.sum(counts == 1))
    if present >= 5 and singles >= present / 2:  # labels that look like free text: a column mix-up, not rare classes
        remedy = (
            f"{singles} of its {present} classes occur once, as texts would: check that the task's label column is "
            "not the text column (columns swapped?)"
        )
    raise DataError(
        f"class {_label_repr(label)} of task {task_name!r} has only {count} example{'s' if count != 1 else ''}{where}; "
        f"{need}; {remedy}"
    )


def stratified_holdout(
    split: Split,
    tasks: Sequence[TaskSpec],
    fraction: float,
    seed: int,
    *,
    stratify_on: str | None = None,
    held_name: str = "val",
    source: str = "",
    shown_fraction: float | None = None,
) -> tuple[Split, Split]:
    """Hold out `fraction` of `split`, stratified on `stratify_on` (default: the first task).

    Returns (rest, held); both keep the original row order. `held_name` names the held
    split ("val" / "test") and the settings suggested in errors (data.<held_name>_fraction,
    data.<held_name>_file); `source` names the file in errors, and `shown_fraction` the
    configured fraction when `fraction` was rescaled (a val split taken after a test split).
    """
    fraction = float(fraction)
    setting = f"data.{held_name}_fraction={shown_fraction if shown_fraction is not None else fraction:g}"
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{setting}: a held-out fraction must be above 0 and below 1")
    if not tasks:
        raise DataError("cannot stratify a split without tasks")
    task = next((t for t in tasks if t.name == stratify_on), None) if stratify_on else tasks[0]
    if task is None:
        raise DataError(f"cannot stratify on {stratify_on!r}: tasks are {', '.join(t.name for t in tasks)}")
    name, labels, y = _targets(split, task)
    n = len(split)
    n_held = math.ceil(fraction * n)  # as scikit-learn rounds test_size
    n_rest = n - n_held
    where = f" in {source}" if source else ""
    fix_file = f"provide data.{held_name}_file"
    if n_held < 1 or n_rest < 1:
        raise DataError(f"{n} rows{where} are too few to hold out {setting}; add rows or {fix_file}")

    _check_min_count(
        name,
        labels,
        class_counts(y, len(labels) if labels else None),
        2,
        source,
        f"a stratified {held_name} split ({setting}) needs at least 2 per class",
        f"add examples of it, {fix_file}, or remove that class",
    )
    y1 = _single_column(y)
    if y1 is None:
        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        rest, held = next(splitter.split(np.zeros((n, 1)), y))
    else:
        present = int(np.count_nonzero(np.bincount(y1)))
        if n_held < present:
            raise DataError(
                f"{setting} of {n} rows{where} holds out {n_held} rows, fewer than the "
                f"{present} classes of task {name!r}; raise data.{held_name}_fraction or {fix_file}"
            )
        if n_rest < present:
            raise DataError(
                f"{setting} of {n} rows{where} leaves {n_rest} training rows, fewer than the "
                f"{present} classes of task {name!r}; lower data.{held_name}_fraction or {fix_file}"
            )
        rest, held = train_test_split(np.arange(n), test_size=n_held, random_state=seed, stratify=y1)
    if len(held) == 0 or len(rest) == 0:
        raise DataError(f"{n} rows{where} are too few to hold out {setting}; add rows or {fix_file}")
    held_split = split.subset(np.sort(held))
    held_split.name = held_name
    return split.subset(np.sort(rest)), held_split


def kfold_indices(
    split: Split,
    task: TaskSpec | str,
    k: int,
    fold: int,
    seed: int,
    stratified: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) row indices of fold `fold` of a seeded k-fold over `split`.

    Stratified on `task` (StratifiedKFold for multi-class, MultilabelStratifiedKFold for
    multi-label), else a shuffled KFold. Indices are sorted int64 arrays.
    """
    k, fold = int(k), int(fold)
    if k < 2:
        raise DataError(f"cv.k={k}: k-fold cross-validation needs at least 2 folds")
    if not 0 <= fold < k:
        raise DataError(f"cv.fold={fold} is outside 0..{k - 1} (cv.k={k}); pick a fold in that range")
    n = len(split)
    if n < k:
        raise DataError(f"{n} rows are too few for cv.k={k} folds; lower cv.k or add rows")

    X = np.zeros((n, 1))
    if stratified:
        name, labels, y = _targets(split, task)
        _check_min_count(
            name,
            labels,
            class_counts(y, len(labels) if labels else None),
            k,
            "",
            f"stratified {k}-fold cross-validation needs at least {k} per class",
            "lower cv.k, set cv.stratified=false, or add examples of it",
        )
        y1 = _single_column(y)
        if y1 is None:
            folds = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y)
        else:
            folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(X, y1)
    else:
        folds = KFold(n_splits=k, shuffle=True, random_state=seed).split(X)
    for i, (train_idx, held_idx) in enumerate(folds):
        if i == fold:
            return np.sort(train_idx).astype(np.int64), np.sort(held_idx).astype(np.int64)
    raise AssertionError("unreachable: fold was checked against k")


__all__ = ["class_counts", "kfold_indices", "stratified_holdout"]
