"""Per-task classification metrics with scikit-learn.

Flat keys used everywhere (monitoring, metrics.json, reports):
  loss, macro_f1 (mean over tasks), {task}/loss, {task}/macro_f1, {task}/micro_f1,
  {task}/accuracy (multi-class) or {task}/subset_accuracy (multi-label).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

from emotrain.data.types import TaskSpec


def predict_labels(task: TaskSpec, probs: np.ndarray, thresholds=None) -> np.ndarray:
    """Class ids [n] for multi-class; 0/1 matrix [n, C] for multi-label (per-label thresholds or 0.5)."""
    if not task.multilabel:
        return probs.argmax(-1)
    th = 0.5 if thresholds is None else np.asarray(thresholds, dtype=np.float32)
    return (probs >= th).astype(np.int64)


def task_metrics(task: TaskSpec, probs: np.ndarray, targets: np.ndarray, thresholds=None) -> tuple[dict, dict]:
    """Returns (scalar metrics, per-class {label: {precision, recall, f1, support}})."""
    pred = predict_labels(task, probs, thresholds)
    y = targets.astype(np.int64)
    labels = list(range(task.num_labels))
    with warnings.catch_warnings():
        # A class absent from a small split has undefined precision/recall: sklearn scores it 0.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kw = {} if task.multilabel else {"labels": labels}
        scalars = {
            "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0, **kw)),
            "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0, **kw)),
        }
        key = "subset_accuracy" if task.multilabel else "accuracy"
        scalars[key] = float(accuracy_score(y, pred))
        p, r, f, s = precision_recall_fscore_support(y, pred, average=None, zero_division=0, **kw)
    per_class = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(task.labels)
    }
    return scalars, per_class


def evaluate_predictions(
    tasks: list[TaskSpec],
    probs: dict,
    targets: dict,
    losses: dict[str, float],
    total_loss: float,
    thresholds: dict | None = None,
) -> tuple[dict, dict]:
    """Flat scalar metrics over all tasks plus {task: per-class table}."""
    flat: dict[str, float] = {"loss": float(total_loss)}
    per_class: dict[str, dict] = {}
    f1s = []
    for t in tasks:
        scalars, table = task_metrics(t, probs[t.name], targets[t.name], (thresholds or {}).get(t.name))
        flat[f"{t.name}/loss"] = float(losses[t.name])
        for k, v in scalars.items():
            flat[f"{t.name}/{k}"] = v
        per_class[t.name] = table
        f1s.append(scalars["macro_f1"])
    flat["macro_f1"] = float(np.mean(f1s))
    return flat, per_class
