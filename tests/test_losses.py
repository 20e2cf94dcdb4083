"""conf/loss (emotrain/training/losses.py): focal, label smoothing, class and task weights, label reduction,
uncertainty weighting - against their formulas and in real short trainings."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import compose, make_recipe
from emotrain.config import schema_for
from emotrain.data.types import TaskSpec
from emotrain.errors import ConfigError
from emotrain.training.losses import MultiTaskLoss


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def no_dropout(model) -> None:
    """The tiny BERT has its own dropout (p=0.1) in embeddings, attention and outputs."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


# ============================================================================ losses

MC = TaskSpec("emotion", ("a", "b", "c"), False)
ML = TaskSpec("tags", ("x", "y", "z"), True)


def make_loss(tasks, counts=None, n=None, **loss_kw) -> MultiTaskLoss:
    cfg = OmegaConf.merge(OmegaConf.structured(schema_for("loss", loss_kw.get("kind", "default"))), loss_kw)
    counts = counts or {t.name: np.ones(t.num_labels) for t in tasks}
    return MultiTaskLoss(tasks, cfg, counts, n or 10)


def _batch(seed=0, n=12):
    g = torch.Generator().manual_seed(seed)
    logits = {"emotion": torch.randn(n, 3, generator=g) * 2, "tags": torch.randn(n, 3, generator=g) * 2}
    targets = {"emotion": torch.randint(0, 3, (n,), generator=g), "tags": (torch.rand(n, 3, generator=g) > 0.5).float()}
    return logits, targets


@pytest.mark.parametrize("task", [MC, ML], ids=["multi-class", "multi-label"])
def test_focal_with_gamma_zero_and_no_alpha_equals_plain_loss(task):
    logits, targets = _batch()
    x, y = logits[task.name], targets[task.name]
    plain = F.binary_cross_entropy_with_logits(x, y) if task.multilabel else F.cross_entropy(x, y)
    _, default_parts = make_loss([task], kind="default")({task.name: x}, {task.name: y})
    _, focal0 = make_loss([task], kind="focal", gamma=0.0)({task.name: x}, {task.name: y})
    assert float(default_parts[task.name]) == pytest.approx(float(plain), rel=1e-6)
    assert float(focal0[task.name]) == pytest.approx(float(plain), rel=1e-6)
    # gamma > 0 follows the focal formula and down-weights easy examples.
    _, focal2 = make_loss([task], kind="focal", gamma=2.0)({task.name: x}, {task.name: y})
    if task.multilabel:
        p = torch.sigmoid(x)
        p_t = p * y + (1 - p) * (1 - y)
        manual = ((1 - p_t) ** 2 * F.binary_cross_entropy_with_logits(x, y, reduction="none")).mean()
    else:
        p_y = torch.softmax(x, -1).gather(1, y[:, None]).squeeze(1)
        manual = ((1 - p_y) ** 2 * -torch.log(p_y)).mean()
    assert float(focal2[task.name]) == pytest.approx(float(manual), rel=1e-5)
    assert float(focal2[task.name]) < float(plain)


def test_focal_alpha_scalar_and_per_class():
    logits, targets = _batch(1)
    x, y = logits["emotion"], targets["emotion"]
    ce = F.cross_entropy(x, y, reduction="none")
    _, scalar = make_loss([MC], kind="focal", gamma=0.0, alpha=0.25)({"emotion": x}, {"emotion": y})
    assert float(scalar["emotion"]) == pytest.approx(float(0.25 * ce.mean()), rel=1e-6)
    alpha = [0.2, 0.5, 3.0]
    _, per_class = make_loss([MC], kind="focal", gamma=0.0, alpha=alpha)({"emotion": x}, {"emotion": y})
    assert float(per_class["emotion"]) == pytest.approx(float((torch.tensor(alpha)[y] * ce).mean()), rel=1e-6)

    # Multi-label: alpha for positives, 1 - alpha for negatives; per label as a list.
    xm, ym = logits["tags"], targets["tags"]
    bce = F.binary_cross_entropy_with_logits(xm, ym, reduction="none")
    _, ml = make_loss([ML], kind="focal", gamma=0.0, alpha=0.25)({"tags": xm}, {"tags": ym})
    assert float(ml["tags"]) == pytest.approx(float(((0.25 * ym + 0.75 * (1 - ym)) * bce).mean()), rel=1e-6)
    a = torch.tensor([0.1, 0.5, 0.9])
    _, ml_pc = make_loss([ML], kind="focal", gamma=0.0, alpha=a.tolist())({"tags": xm}, {"tags": ym})
    assert float(ml_pc["tags"]) == pytest.approx(float(((a * ym + (1 - a) * (1 - ym)) * bce).mean()), rel=1e-6)

    with pytest.raises(ConfigError, match="loss.alpha"):
        make_loss([MC], kind="focal", alpha=[1.0, 2.0])
    with pytest.raises(ConfigError, match="loss.alpha"):
        make_loss([ML], kind="focal", alpha=1.5)


@pytest.mark.parametrize("kind", ["default", "focal"])
def test_label_smoothing_applies_to_multiclass_only(kind):
    logits, targets = _batch(2)
    extra = {"gamma": 0.0} if kind == "focal" else {}
    _, plain = make_loss([MC, ML], kind=kind, **extra)(logits, targets)
    _, smooth = make_loss([MC, ML], kind=kind, label_smoothing=0.2, **extra)(logits, targets)
    expected = F.cross_entropy(logits["emotion"], targets["emotion"], label_smoothing=0.2)
    assert float(smooth["emotion"]) == pytest.approx(float(expected), rel=1e-6)
    assert float(smooth["emotion"]) != pytest.approx(float(plain["emotion"]), rel=1e-3)
    assert float(smooth["tags"]) == pytest.approx(float(plain["tags"]), rel=1e-7)  # multi-label untouched
    with pytest.raises(ConfigError, match="loss.label_smoothing"):
        make_loss([MC], label_smoothing=1.0)


def _rare_share(criterion, task: TaskSpec, target: torch.Tensor, rare_mask: torch.Tensor) -> float:
    """Fraction of the loss carried by the rare class: how much of it vanishes when the
    rare entries are predicted perfectly (all other entries are equally wrong)."""
    n = target.shape[0]
    zeros = torch.zeros(n, task.num_labels)
    total = float(criterion({task.name: zeros}, {task.name: target})[0])
    fixed = zeros.clone()
    if task.multilabel:
        fixed[rare_mask] = 30.0  # confident positives on the rare label
    else:
        fixed[rare_mask, target[rare_mask]] = 30.0
    rest = float(criterion({task.name: fixed}, {task.name: target})[0])
    return 1.0 - rest / total


@pytest.mark.parametrize("kind", ["default", "focal"])
def test_balanced_class_weights_raise_the_rare_class_share(kind):
    # Multi-class: 8 + 8 examples of two classes, 1 of a rare third.
    y = torch.tensor([0] * 8 + [1] * 8 + [2])
    counts = {"emotion": np.bincount(y.numpy(), minlength=3)}
    rare = y == 2
    plain = _rare_share(make_loss([MC], counts, 17, kind=kind), MC, y, rare)
    balanced_loss = make_loss([MC], counts, 17, kind=kind, class_weights="balanced")
    balanced = _rare_share(balanced_loss, MC, y, rare)
    assert plain == pytest.approx(1 / 17, rel=1e-4)
    assert balanced == pytest.approx(1 / 3, rel=1e-4)  # w = n / (C * count): 17/3 vs 17/24 each
    assert balanced > plain
    assert balanced_loss.per_task["emotion"].class_weight.tolist() == pytest.approx([17 / 24, 17 / 24, 17 / 3])

    # Multi-label: label z is positive in 1 of 16 examples -> pos_weight (n - count) / count.
    ym = torch.zeros(16, 3)
    ym[:8, 0] = 1
    ym[8:, 1] = 1
    ym[0, 2] = 1
    counts_ml = {"tags": ym.sum(0).numpy()}
    rare_ml = torch.zeros(16, 3, dtype=torch.bool)
    rare_ml[0, 2] = True
    plain_ml = _rare_share(make_loss([ML], counts_ml, 16, kind=kind), ML, ym, rare_ml)
    bal = make_loss([ML], counts_ml, 16, kind=kind, class_weights="balanced")
    assert bal.per_task["tags"].class_weight.tolist() == pytest.approx([1.0, 1.0, 15.0])
    assert _rare_share(bal, ML, ym, rare_ml) > 5 * plain_ml


def test_explicit_class_weights_list_and_per_task_mapping(tmp_path):
    logits, targets = _batch(3)
    w = [1.0, 2.0, 5.0]
    _, parts = make_loss([MC], class_weights=w)({"emotion": logits["emotion"]}, {"emotion": targets["emotion"]})
    expected = F.cross_entropy(logits["emotion"], targets["emotion"], weight=torch.tensor(w))
    assert float(parts["emotion"]) == pytest.approx(float(expected), rel=1e-6)

    # {task: list} through the command-line grammar, for the sample data's two tasks.
    cfg = compose(["loss.class_weights={emotion:[1,1,1,1,1,1,4],sentiment:[1,2,1,1]}"], tmp_path)
    tasks = [TaskSpec("emotion", tuple("abcdefg"), False), TaskSpec("sentiment", tuple("pnam"), False)]
    crit = MultiTaskLoss(tasks, cfg.loss, {t.name: np.ones(t.num_labels) for t in tasks}, 10)
    assert crit.per_task["emotion"].class_weight.tolist() == [1, 1, 1, 1, 1, 1, 4]
    assert crit.per_task["sentiment"].class_weight.tolist() == [1, 2, 1, 1]


def test_class_weights_of_wrong_length_are_refused_at_setup(tmp_path):
    with pytest.raises(ConfigError, match=r"loss\.class_weights.*7 labels but 3 weights"):
        make_recipe(["loss.class_weights={emotion:[1,2,3]}"], tmp_path)
    with pytest.raises(ConfigError, match=r"loss\.class_weights"):
        make_loss([MC], class_weights="inverse")


def test_fixed_task_weights_weight_the_objective():
    logits, targets = _batch(4)
    crit = make_loss([MC, ML], task_weights={"emotion": 2.0, "tags": 0.5})
    total, parts = crit(logits, targets)
    assert float(total) == pytest.approx(2.0 * float(parts["emotion"]) + 0.5 * float(parts["tags"]), rel=1e-6)
    assert crit.task_weights() == {"emotion": 2.0, "tags": 0.5}
    with pytest.raises(ConfigError, match="loss.task_weights"):
        make_loss([MC], task_weights={"emotoin": 2.0})


@pytest.mark.parametrize("kind", ["default", "focal"])
def test_label_reduction_sum_adds_the_per_label_losses_of_multilabel_tasks_only(kind):
    logits, targets = _batch(6)
    mean_parts = make_loss([MC, ML], kind=kind)(logits, targets)[1]
    sum_parts = make_loss([MC, ML], kind=kind, label_reduction="sum")(logits, targets)[1]
    assert float(sum_parts["tags"]) == pytest.approx(ML.num_labels * float(mean_parts["tags"]), rel=1e-6)
    assert float(sum_parts["emotion"]) == pytest.approx(
        float(mean_parts["emotion"]), rel=1e-6
    )  # multi-class: one loss per example
    # Per example, summed over labels, averaged over examples: the hand-written formula.
    z, y = logits["tags"].float(), targets["tags"]
    per_label = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    if kind == "focal":
        p_t = torch.sigmoid(z) * y + (1 - torch.sigmoid(z)) * (1 - y)
        per_label = (1 - p_t) ** 2.0 * per_label
    assert float(sum_parts["tags"]) == pytest.approx(float(per_label.sum(1).mean()), rel=1e-6)


def test_unknown_label_reduction_is_refused_at_compose_time(tmp_path):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match="label_reduction"):
        compose(["loss.label_reduction=median"], tmp_path)


def test_uncertainty_weighting_formula():
    logits, targets = _batch(5)
    crit = make_loss([MC, ML], task_weighting="uncertainty")
    with torch.no_grad():
        crit.log_vars.copy_(torch.tensor([0.5, -0.3]))
    total, parts = crit(logits, targets)
    parts = {k: v.detach() for k, v in parts.items()}
    manual = math.exp(-0.5) * float(parts["emotion"]) + 0.5 + math.exp(0.3) * float(parts["tags"]) - 0.3
    assert total.item() == pytest.approx(manual, rel=1e-6)
    assert crit.task_weights() == pytest.approx({"emotion": math.exp(-0.5), "tags": math.exp(0.3)})
    # The reported loss stays the fixed-weight sum.
    assert crit.reported({"emotion": 1.0, "tags": 2.0}) == 3.0
    total.backward()
    assert crit.log_vars.grad is not None and torch.all(crit.log_vars.grad != 0)


def test_uncertainty_weights_are_trainable_move_and_are_saved(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emotrain")
    r = make_recipe(
        ["loss.task_weighting=uncertainty", "optim.lr=1e-2", "trainer.epochs=2", "data.max_train_examples=64"], tmp_path
    )
    log_vars = r.criterion.log_vars
    assert isinstance(log_vars, torch.nn.Parameter) and log_vars.requires_grad
    assert any(p is log_vars for g in r.optimizer.param_groups for p in g["params"])
    r.train()
    metrics = r.save()
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["history"] == json.loads(json.dumps(metrics["history"]))
    weights = [h["task_weights"] for h in on_disk["history"]]
    assert len(weights) == 2 and all(set(w) == {"emotion", "sentiment"} for w in weights)
    for w in weights:
        for task, value in w.items():
            assert abs(value - 1.0) > 1e-3, f"{task} weight did not move from 1.0: {value}"
    assert weights[0] != weights[1]  # still learning in epoch 2
    assert weights[-1] == pytest.approx(r.criterion.task_weights())
    assert sum("learned task weights" in rec.getMessage() for rec in caplog.records) == 2  # logged each epoch
