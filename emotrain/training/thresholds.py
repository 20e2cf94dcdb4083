"""Per-label decision thresholds for multi-label tasks, tuned on the validation split."""

from __future__ import annotations

import numpy as np

from emotrain.data.types import TaskSpec

GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def tune_label_thresholds(
    probs: np.ndarray, targets: np.ndarray, floor: float = 0.05, grid: np.ndarray = GRID
) -> np.ndarray:
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


def tune_thresholds(
    tasks: list[TaskSpec], probs: dict, targets: dict, floor: float = 0.05, fixed: float | None = None
) -> dict[str, list[float]]:
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


class ThresholdPolicy:
    """How the kept model decides the labels of multi-label tasks
    (trainer.tune_thresholds / threshold / threshold_floor).

    suffix: the metric-key suffix of validation metrics at these decisions (`emotion/macro_f1_tuned`), None when the
    decisions are at 0.5 (the plain keys say it all); description: the policy in words, for every report.
    """

    def __init__(self, tune: bool, fixed: float | None, floor: float):
        self.tune, self.fixed, self.floor = bool(tune), fixed, float(floor)
        if fixed is not None:
            self.suffix, self.description = "fixed", f"a fixed threshold of {fixed:g} for every label"
        elif self.tune:
            self.suffix, self.description = (
                "tuned",
                f"per-label thresholds tuned on val to maximise each label's F1 (floor {self.floor:g})",
            )
        else:
            self.suffix, self.description = None, "0.5 for every label"

    @classmethod
    def from_config(cls, trainer_cfg) -> ThresholdPolicy:
        return cls(trainer_cfg.tune_thresholds, trainer_cfg.threshold, trainer_cfg.threshold_floor)

    @property
    def needs_probabilities(self) -> bool:
        return self.fixed is None and self.tune

    def thresholds(self, tasks: list[TaskSpec], probs: dict, targets: dict) -> dict[str, list[float]]:
        """{task: per-label thresholds} of every multi-label task; `probs`/`targets`: validation, used when tuning."""
        if self.fixed is not None:
            return tune_thresholds(tasks, {}, {}, fixed=self.fixed)
        if not self.tune:
            return tune_thresholds(tasks, {}, {}, fixed=0.5)
        return tune_thresholds(tasks, probs, targets, floor=self.floor)

    def decision_metrics(self, tasks: list[TaskSpec], probs: dict, targets: dict, metrics: dict) -> dict[str, float]:
        """Validation metrics of multi-label tasks at this policy's decisions for these probabilities (thresholds
        tuned on this split for these weights, or fixed), besides the plain keys at 0.5: `{task}/macro_f1_tuned`,
        ..., `macro_f1_tuned` (the mean over tasks, single-label tasks as they are in `metrics`)."""
        from emotrain.training.metrics import task_metrics

        if self.suffix is None or not any(t.multilabel for t in tasks):
            return {}
        thresholds = self.thresholds(tasks, probs, targets)
        out = {}
        for t in tasks:
            if t.multilabel:
                scalars, _ = task_metrics(t, probs[t.name], targets[t.name], thresholds[t.name])
                out.update({f"{t.name}/{k}_{self.suffix}": v for k, v in scalars.items()})
        f1s = [
            out[f"{t.name}/macro_f1_{self.suffix}"] if t.multilabel else metrics[f"{t.name}/macro_f1"] for t in tasks
        ]
        out[f"macro_f1_{self.suffix}"] = float(np.mean(f1s))
        return out
