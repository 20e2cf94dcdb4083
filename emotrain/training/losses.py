"""Per-task losses (cross-entropy / BCE / focal, class weights, label smoothing) and multi-task weighting.

Reads conf/loss/.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emotrain.config import check_range, choice
from emotrain.data.splitting import class_counts as count_classes
from emotrain.data.types import TaskSpec
from emotrain.errors import ConfigError

log = logging.getLogger(__name__)


def focal_loss_multiclass(
    logits, target, gamma: float, alpha: torch.Tensor | None, weight: torch.Tensor | None, label_smoothing: float = 0.0
):
    """Softmax focal loss: mean over examples of -alpha_y * (1 - p_y)^gamma * CE (Lin et al. 2017)."""
    logp = F.log_softmax(logits.float(), dim=-1)
    ce = (
        F.nll_loss(logp, target, reduction="none")
        if label_smoothing == 0
        else F.cross_entropy(logits.float(), target, reduction="none", label_smoothing=label_smoothing)
    )
    p_y = logp.gather(1, target[:, None]).squeeze(1).exp()
    loss = (1.0 - p_y).pow(gamma) * ce
    if alpha is not None:
        loss = loss * (alpha[target] if alpha.ndim else alpha)
    if weight is not None:
        w = weight[target]
        return (loss * w).sum() / w.sum()
    return loss.mean()


def reduce_labels(per_label: torch.Tensor, label_reduction: str) -> torch.Tensor:
    """(examples, labels) losses -> one number: mean over examples of the sum (label_reduction=sum) or mean
    over labels."""
    return per_label.sum(-1).mean() if label_reduction == "sum" else per_label.mean()


def focal_loss_multilabel(
    logits,
    target,
    gamma: float,
    alpha: torch.Tensor | None,
    pos_weight: torch.Tensor | None,
    label_reduction: str = "mean",
):
    """Sigmoid focal loss per label; gamma=0, alpha=None is plain BCE.

    Averaged over examples; over labels averaged (label_reduction=mean) or summed (sum).
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pos_weight)
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = (1.0 - p_t).pow(gamma) * bce
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return reduce_labels(loss, label_reduction)


def _check_weights(key: str, value, *, scalar_ok: bool, per_task: bool = True) -> None:
    """class_weights / alpha: null, 'balanced' (class_weights), a scalar (alpha), a list of numbers >= 0,
    or {task: one of those}."""
    if value is None:
        return
    if isinstance(value, str):
        if scalar_ok or value != "balanced":
            raise ConfigError(
                f"{key}={value!r}: use null, {'a number' if scalar_ok else repr('balanced')} or a list of numbers >= 0"
            )
        return
    if hasattr(value, "keys"):
        if not per_task:
            raise ConfigError(f"{key}: expected a list of numbers, not a mapping")
        for task in value:
            _check_weights(f"{key}.{task}", value[task], scalar_ok=scalar_ok, per_task=False)
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not scalar_ok:
            raise ConfigError(f"{key}={value}: use null, 'balanced' or a list of one weight per label")
        check_range(key, value, ge=0)
        return
    try:
        items = list(value)
    except TypeError:
        raise ConfigError(f"{key}={value!r}: expected a list of numbers >= 0") from None
    for i, w in enumerate(items):
        check_range(f"{key}[{i}]", w, ge=0)
    if items and not any(items):
        raise ConfigError(f"{key}: every weight is 0, so nothing would train; give at least one weight > 0")


def validate_loss_config(loss_cfg) -> None:
    """loss.* before any work; lengths per task are checked when the loss is built (labels known then)."""
    check_range("loss.label_smoothing", loss_cfg.label_smoothing, ge=0, lt=1)
    for task, weight in loss_cfg.task_weights.items():
        check_range(f"loss.task_weights.{task}", weight, ge=0)
    _check_weights("loss.class_weights", loss_cfg.class_weights, scalar_ok=False)
    if choice(loss_cfg.kind) == "focal":
        check_range("loss.gamma", loss_cfg.gamma, ge=0, le=10)  # the focal paper uses 0-5; far above overflows
        _check_weights("loss.alpha", loss_cfg.alpha, scalar_ok=True)


def _per_task_value(value, task: TaskSpec, what: str):
    """`value` is null, a scalar, a list (single task only) or a {task: ...} mapping."""
    if value is None:
        return None
    if isinstance(value, dict) or hasattr(value, "keys"):
        value = value.get(task.name) if task.name in value else None
    return value


def class_weight_tensor(spec, task: TaskSpec, counts: np.ndarray, n: int, key: str) -> torch.Tensor | None:
    """Class weights for a multi-class task, or BCE pos_weight for a multi-label task."""
    spec = _per_task_value(spec, task, key)
    if spec is None:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    if isinstance(spec, str):
        if spec != "balanced":
            raise ConfigError(f"{key}={spec!r}: use null, 'balanced' or a list of {task.num_labels} numbers")
        safe = np.maximum(counts, 1.0)
        if task.multilabel:
            w = (n - counts) / safe  # positives vs negatives per label
        else:
            w = n / (task.num_labels * safe)  # scikit-learn's 'balanced'
        return torch.tensor(w, dtype=torch.float32)
    w = np.asarray(list(spec), dtype=np.float64)
    if w.shape != (task.num_labels,):
        raise ConfigError(f"{key}: task {task.name!r} has {task.num_labels} labels but {w.size} weights were given")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ConfigError(f"{key}: weights must be >= 0 (task {task.name!r})")
    return torch.tensor(w, dtype=torch.float32)


def alpha_tensor(spec, task: TaskSpec) -> torch.Tensor | None:
    spec = _per_task_value(spec, task, "loss.alpha")
    if spec is None:
        return None
    if isinstance(spec, (int, float)):
        if task.multilabel and not 0 <= spec <= 1:
            raise ConfigError(f"loss.alpha={spec}: a multi-label focal alpha must lie in [0, 1]")
        return torch.tensor(float(spec))
    a = np.asarray(list(spec), dtype=np.float64)
    if a.shape != (task.num_labels,):
        raise ConfigError(f"loss.alpha: task {task.name!r} has {task.num_labels} labels but {a.size} values were given")
    return torch.tensor(a, dtype=torch.float32)


class TaskLoss(nn.Module):
    def __init__(
        self,
        task: TaskSpec,
        kind: str,
        gamma: float,
        alpha,
        class_weight,
        label_smoothing: float,
        label_reduction: str = "mean",
    ):
        super().__init__()
        self.task = task
        self.kind = kind
        self.label_reduction = label_reduction
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing) if not task.multilabel else 0.0
        self.register_buffer("alpha", alpha if alpha is not None else None)
        self.register_buffer("class_weight", class_weight if class_weight is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.task.multilabel:
            if self.kind == "focal":
                return focal_loss_multilabel(
                    logits, target, self.gamma, self.alpha, self.class_weight, self.label_reduction
                )
            bce = F.binary_cross_entropy_with_logits(
                logits.float(), target, pos_weight=self.class_weight, reduction="none"
            )
            return reduce_labels(bce, self.label_reduction)
        if self.kind == "focal":
            return focal_loss_multiclass(
                logits, target, self.gamma, self.alpha, self.class_weight, self.label_smoothing
            )
        return F.cross_entropy(logits.float(), target, weight=self.class_weight, label_smoothing=self.label_smoothing)


class MultiTaskLoss(nn.Module):
    """Combines per-task losses: fixed weights, or learned uncertainty weights.

    Uncertainty weighting (Kendall, Gal & Cipolla 2018): total = sum_t exp(-s_t) * L_t + s_t
    with s_t = log sigma_t^2 learned. The *reported* loss is always the fixed-weight sum,
    so validation losses stay comparable across epochs and runs.
    """

    def __init__(self, tasks: list[TaskSpec], loss_cfg, class_counts: dict[str, np.ndarray], n_train: int):
        super().__init__()
        self.tasks = list(tasks)
        kind = choice(loss_cfg.kind)
        weighting = choice(loss_cfg.task_weighting)
        known = {t.name for t in tasks}
        unknown = set(loss_cfg.task_weights) - known
        if unknown:
            raise ConfigError(f"loss.task_weights: unknown task(s) {sorted(unknown)}; tasks are {sorted(known)}")
        if not 0.0 <= loss_cfg.label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing={loss_cfg.label_smoothing}: must be in [0, 1)")
        gamma = loss_cfg.gamma if kind == "focal" else 0.0  # the focal option's keys
        if gamma < 0:
            raise ConfigError(f"loss.gamma={gamma}: must be >= 0")
        for key in ("class_weights", "alpha"):
            value = loss_cfg.get(key)
            if (
                len(tasks) > 1
                and value is not None
                and not isinstance(value, (str, int, float))
                and not hasattr(value, "keys")
            ):
                raise ConfigError(
                    f"loss.{key}: a plain list is for single-task runs; with tasks {', '.join(t.name for t in tasks)} "
                    f"give one list per task, e.g. 'loss.{key}={{{tasks[0].name}: [...]}}'"
                )
        self.fixed_weights = {t.name: float(loss_cfg.task_weights.get(t.name, 1.0)) for t in tasks}
        if weighting == "fixed" and not any(self.fixed_weights.values()):
            raise ConfigError(
                f"loss.task_weights: every task's weight is 0 ({', '.join(self.fixed_weights)}), so the loss is 0 and "
                "nothing trains; give at least one task a weight > 0"
            )
        self.per_task = nn.ModuleDict(
            {
                t.name: TaskLoss(
                    t,
                    kind,
                    gamma,
                    alpha_tensor(loss_cfg.alpha, t) if kind == "focal" else None,
                    class_weight_tensor(loss_cfg.class_weights, t, class_counts[t.name], n_train, "loss.class_weights"),
                    loss_cfg.label_smoothing,
                    choice(loss_cfg.label_reduction),
                )
                for t in tasks
            }
        )
        self.uncertainty = weighting == "uncertainty"
        self.log_vars = nn.Parameter(torch.zeros(len(tasks))) if self.uncertainty else None

    def forward(self, logits: dict, targets: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (objective to backpropagate, {task: unweighted task loss})."""
        parts = {name: fn(logits[name], targets[name]) for name, fn in self.per_task.items()}
        if self.uncertainty:
            stacked = torch.stack([parts[t.name] for t in self.tasks])
            total = (torch.exp(-self.log_vars) * stacked + self.log_vars).sum()
        else:
            total = sum(self.fixed_weights[n] * v for n, v in parts.items())
        return total, parts

    def reported(self, parts: dict[str, float]) -> float:
        return float(sum(self.fixed_weights[n] * v for n, v in parts.items()))

    def task_weights(self) -> dict[str, float]:
        """Effective weight per task (exp(-s_t) when learned)."""
        if self.uncertainty:
            w = torch.exp(-self.log_vars.detach()).tolist()
            return {t.name: float(x) for t, x in zip(self.tasks, w)}
        return dict(self.fixed_weights)


def class_counts(tasks: list[TaskSpec], targets: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{task: examples per class (multi-class) or positives per label (multi-label)}."""
    return {t.name: count_classes(targets[t.name], t.num_labels) for t in tasks}


def build_loss(
    loss_cfg, tasks: list[TaskSpec], train_targets: dict[str, np.ndarray], n_train: int, device
) -> MultiTaskLoss:
    """The criterion for conf/loss: class counts of the training split feed 'balanced' weights."""
    return MultiTaskLoss(tasks, loss_cfg, class_counts(tasks, train_targets), n_train).to(device)
