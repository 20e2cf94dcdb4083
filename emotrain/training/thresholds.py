"""Per-label decision thresholds for multi-label tasks, tuned on the validation split."""

from __future__ import annotations

import numpy as np

from emotrain.data.types import TaskSpec

GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def tune_label_thresholds(probs: np.ndarray, targets: np.ndarray, floor: float = 0.05, grid: np.ndarray = GRID) -> np.ndarray:
    """For each label, the threshold in `grid` (>= floor) that maximises that label's F1.

    Ties go to the threshold nearest 0.5; a label with no positives in `targets` keeps 0.5
    (nothing to tune on, and a low threshold would only add false positives).
    """
    grid = grid[grid >= floor]
    y = targets.astype(bool)
    pred = probs[None, :, :] >= grid[:, None, None]  # [G, n, C]
    tp = (pred & y[None]).sum(1)
    fp = (pred & ~y[None]).sum(1)
    fn = (~pred & y[None]).sum(1)
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)  # [G, C]
    # Prefer the best F1, then the threshold closest to 0.5.
    score = f1 - 1e-9 * np.abs(grid - 0.5)[:, None]
    best = grid[score.argmax(0)]
    best[y.sum(0) == 0] = 0.5
    return best.astype(np.float32)


def tune_thresholds(tasks: list[TaskSpec], probs: dict, targets: dict, floor: float = 0.05, fixed: float | None = None) -> dict[str, list[float]]:
    """{task: per-label thresholds} for every multi-label task; `fixed` sets all labels to one value."""
    out = {}
    for t in tasks:
        if not t.multilabel:
            continue
        if fixed is not None:
            out[t.name] = [float(fixed)] * t.num_labels
        else:
            out[t.name] = tune_label_thresholds(probs[t.name], targets[t.name], floor).tolist()
    return out
