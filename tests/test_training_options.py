"""Training options as config groups: freeze, loss, scheduler, optim and trainer keys.

Loop behaviour is checked with real short trainings through `TrainingRecipe` on the tiny
backbone; the building blocks (losses, schedules, optimiser groups) against their formulas.
Every test compares against what the option must change, so it fails if the option is ignored.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import TINY, compose, make_recipe, train

from emotrain.config import OptimConfig, schema_for
from emotrain.data.types import TaskSpec
from emotrain.errors import ConfigError
from emotrain.training.losses import MultiTaskLoss
from emotrain.training.schedulers import build_scheduler





def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def no_dropout(model) -> None:
    """The tiny BERT has its own dropout (p=0.1) in embeddings, attention and outputs."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


# ============================================================================ freeze


def _frozen_prefixes(mode: str) -> tuple[str, ...]:
    return {
        "none": (),
        "partial": ("encoder.embeddings.", "encoder.encoder.layer.0."),  # embeddings + first freeze.layers=1
        "full": ("encoder.",),
    }[mode]


@pytest.mark.parametrize("mode", ["none", "partial", "full"])
def test_frozen_parameters_do_not_change_after_an_optimiser_step(mode, tmp_path):
    r = make_recipe(
        [f"freeze={mode}", *(["freeze.layers=1"] if mode == "partial" else []), "trainer.max_steps=1", "optim.lr=1e-2", "scheduler=constant", "scheduler.warmup_steps=0", "data.max_train_examples=32"],
        tmp_path,
    )
    before = snapshot(r.model)
    r.train()
    assert r.state.global_step == 1
    frozen_prefixes = _frozen_prefixes(mode)
    frozen, trained = [], []
    for name, p in r.model.named_parameters():
        is_frozen = name.startswith(frozen_prefixes) if frozen_prefixes else False
        (frozen if is_frozen else trained).append(name)
        if is_frozen:
            assert torch.equal(p.detach(), before[name]), f"{name} is frozen under freeze={mode} but changed"
        else:
            assert not torch.equal(p.detach(), before[name]), f"{name} trains under freeze={mode} but did not change"
    assert trained, "something must train"
    if mode != "none":
        assert frozen
    # The logged/recorded trainable count is exactly the non-frozen parameters.
    expected = sum(p.numel() for n, p in r.model.named_parameters() if n in trained)
    assert r.state.history[-1]["trainable_params"] == expected


def test_partial_freeze_layers_out_of_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="freeze.layers=3"):
        make_recipe(["freeze=partial", "freeze.layers=3"], tmp_path)  # the tiny encoder has 2 layers


def test_progressive_unfreezing_grows_trainable_count_on_schedule(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emotrain")
    # 16 examples, batch 16: one optimiser step per epoch.
    r = make_recipe(["freeze=progressive", "freeze.every=2", "trainer.epochs=6", "data.max_train_examples=16", "optim.lr=1e-2"], tmp_path)
    layers = r.model.encoder.encoder.layer
    per_layer = sum(p.numel() for p in layers[0].parameters())
    heads = sum(p.numel() for p in r.model.heads.parameters())
    assert sum(p.numel() for p in layers[1].parameters()) == per_layer

    top_before = snapshot(layers[1])
    r.train()
    counts = [h["trainable_params"] for h in r.state.history]
    # every=2: epochs 1-2 heads only, 3-4 + top layer, 5-6 + both layers; embeddings stay frozen.
    unfrozen = [0, 0, 1, 1, 2, 2]
    assert counts == [heads + k * per_layer for k in unfrozen]
    # Logged once per epoch.
    logged = [rec.getMessage() for rec in caplog.records if "trainable parameters" in rec.getMessage()]
    assert len(logged) == 6
    assert logged[0] == f"epoch 1: {counts[0]} trainable parameters" and logged[-1] == f"epoch 6: {counts[-1]} trainable parameters"
    # And it really trained: the top layer moved once unfrozen.
    assert any(not torch.equal(p.detach(), top_before[n]) for n, p in layers[1].named_parameters())


def test_layer_wise_lr_decay_sets_per_layer_learning_rates():
    from transformers import BertConfig, BertModel

    from emotrain.models.multitask import MultiTaskModel
    from emotrain.training.optim import build_optimizer

    torch.manual_seed(0)
    enc = BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32), add_pooling_layer=False)
    model = MultiTaskModel(enc, [TaskSpec("emotion", ("a", "b", "c"), False)])

    def lrs(decay: float) -> dict[str, tuple[float, float]]:
        cfg = OmegaConf.structured(OptimConfig(lr=1e-3, weight_decay=0.01, layer_decay=decay, fused=False))
        opt = build_optimizer(model, cfg)
        by_id = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
        return {n: by_id[id(p)] for n, p in model.named_parameters()}

    got = lrs(0.5)
    for name, (lr, wd) in got.items():
        if name.startswith("encoder.embeddings."):
            assert lr == pytest.approx(1e-3 * 0.5**3), name
        elif name.startswith("encoder.encoder.layer.0."):
            assert lr == pytest.approx(1e-3 * 0.5**2), name
        elif name.startswith("encoder.encoder.layer.1."):
            assert lr == pytest.approx(1e-3 * 0.5), name
        else:
            assert name.startswith("heads."), name
            assert lr == pytest.approx(1e-3), name
        # No weight decay on biases and LayerNorm weights.
        assert wd == (0.0 if name.endswith(".bias") or "LayerNorm" in name else 0.01), name
    assert all(lr == pytest.approx(1e-3) for lr, _ in lrs(1.0).values())  # 1.0 = off


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
    assert float(sum_parts["emotion"]) == pytest.approx(float(mean_parts["emotion"]), rel=1e-6)  # multi-class: one loss per example
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
    r = make_recipe(["loss.task_weighting=uncertainty", "optim.lr=1e-2", "trainer.epochs=2", "data.max_train_examples=64"], tmp_path)
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


# ============================================================================ schedulers


def expected_factor(kind: str, step: int, warm: int, total: int, cycles: int = 2) -> float:
    """Closed-form lr multipliers."""
    if step < warm:
        return step / warm
    if kind == "constant":
        return 1.0
    progress = (step - warm) / (total - warm)
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "cosine_restarts":
        return 0.0 if progress >= 1 else 0.5 * (1.0 + math.cos(math.pi * ((cycles * progress) % 1.0)))
    raise AssertionError(kind)


def lr_curve(kind: str, total: int, steps: list[int], **sched_kw) -> list[float]:
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.5)
    if kind != "cosine_restarts":
        sched_kw.pop("num_cycles", None)  # a key of that option only
    sched = build_scheduler(opt, OmegaConf.structured(schema_for("scheduler", kind)(kind=kind, **sched_kw)), total)
    out, done = [], 0
    for s in sorted(steps):
        while done < s:
            opt.step()
            sched.step()
            done += 1
        out.append(opt.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "cosine_restarts"])
def test_scheduler_curves_match_their_formulas(kind):
    total, steps = 100, [0, 5, 10, 25, 32, 55, 77, 99, 100]
    got = lr_curve(kind, total, steps, warmup_ratio=0.1)  # warmup = ceil(0.1 * 100) = 10 steps
    assert got == pytest.approx([0.5 * expected_factor(kind, s, 10, total) for s in steps], abs=1e-9)
    # Anchors worked out by hand: end of warmup at the base lr, then each shape.
    assert got[1] == pytest.approx(0.25) and got[2] == pytest.approx(0.5)
    at_55, at_100 = got[5], got[8]
    if kind == "linear":
        assert at_55 == pytest.approx(0.25) and at_100 == 0.0
    elif kind == "cosine":
        assert at_55 == pytest.approx(0.25) and got[3] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 6)))
    elif kind == "constant":
        assert at_55 == at_100 == 0.5
    else:  # two hard restarts: back to the base lr half way through the decay
        assert at_55 == pytest.approx(0.5) and got[4] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 44 / 90)))


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "cosine_restarts"])
def test_warmup_steps_override_warmup_ratio(kind):
    total, steps = 50, [0, 3, 7, 20, 49]
    got = lr_curve(kind, total, steps, warmup_ratio=0.5, warmup_steps=7, num_cycles=3)
    assert got == pytest.approx([0.5 * expected_factor(kind, s, 7, total, cycles=3) for s in steps], abs=1e-9)
    assert got[1] == pytest.approx(0.5 * 3 / 7) and got[2] == pytest.approx(0.5)


def test_scheduler_settings_are_validated():
    with pytest.raises(ConfigError, match="scheduler.warmup_ratio"):
        lr_curve("linear", 10, [1], warmup_ratio=1.5)
    with pytest.raises(ConfigError, match="scheduler.warmup_steps"):
        lr_curve("linear", 10, [1], warmup_steps=-1)
    with pytest.raises(ConfigError, match="scheduler.num_cycles"):
        lr_curve("cosine_restarts", 10, [1], num_cycles=0)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "cosine_restarts"])
def test_recorded_lr_per_step_follows_the_schedule(kind, tmp_path):
    # 64 examples / batch 16 = 4 steps per epoch, 2 epochs = 8 optimiser steps, warmup 2.
    r = make_recipe([f"scheduler={kind}", "scheduler.warmup_steps=2", "optim.lr=1e-3", "trainer.epochs=2", "data.max_train_examples=64"], tmp_path)
    assert r.total_steps == 8
    r.train()
    metrics = r.save()
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    steps = [s for s, _ in on_disk["lr_per_step"]]
    assert steps == list(range(1, 9))
    # Entry [s, lr]: the learning rate after s optimiser steps (the one the next step uses).
    expected = [1e-3 * expected_factor(kind, s, 2, 8) for s in steps]
    assert [lr for _, lr in on_disk["lr_per_step"]] == pytest.approx(expected, abs=1e-12)
    assert [h["lr"] for h in metrics["history"]] == pytest.approx([expected[3], expected[7]], abs=1e-12)


# ============================================================================ trainer keys


def _accum_run(batch_size: int, accum: int, tmp_path):
    r = make_recipe(
        [
            f"trainer.batch_size={batch_size}", f"trainer.grad_accum_steps={accum}", "trainer.length_grouping=false",
            "trainer.dropout=0", "trainer.max_steps=1", "trainer.max_grad_norm=null",
            "scheduler=constant", "scheduler.warmup_steps=0", "optim.lr=1e-3", "data.max_train_examples=64",
        ],
        tmp_path,
    )
    no_dropout(r.model)
    before = snapshot(r.model)
    r.train()
    assert r.state.global_step == 1 and r.state.train_examples == 32
    state = {n: r.optimizer.state[p] for n, p in r.model.named_parameters()}
    return r, before, snapshot(r.model), state


def test_grad_accumulation_4x8_equals_one_batch_of_32(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emotrain")
    _, init_a, after_a, state_a = _accum_run(32, 1, tmp_path / "a")
    r_b, init_b, after_b, state_b = _accum_run(8, 4, tmp_path / "b")
    for name in init_a:
        assert torch.equal(init_a[name], init_b[name]), "same seed must give the same initial weights"
    moved = 0
    for name in after_a:
        # Adam's first moment holds 0.1 x the step's gradient: compares the gradients themselves (scale included).
        assert torch.allclose(state_a[name]["exp_avg"], state_b[name]["exp_avg"], rtol=1e-4, atol=1e-9), name
        # Adam divides each update by |grad| + eps: a ~1e-9 gradient that differs in its third digit
        # moves its weight by ~1e-6, so the weights are compared at 1e-5 (the step itself is lr = 1e-3).
        assert torch.allclose(after_a[name], after_b[name], rtol=0, atol=1e-5), name
        moved += not torch.equal(after_a[name], init_a[name])
    assert moved == len(after_a)
    assert r_b.save()["effective_batch_size"] == 32
    assert any("batch=8 x accum 4 x processes 1 = effective batch 32" in rec.getMessage() for rec in caplog.records)


def test_accumulation_is_not_a_smaller_batch(tmp_path):
    """Control for the test above: one batch of 8 does give a different update."""
    _, _, after_a, _ = _accum_run(32, 1, tmp_path / "a")
    r = make_recipe(
        ["trainer.batch_size=8", "trainer.length_grouping=false", "trainer.dropout=0", "trainer.max_steps=1", "trainer.max_grad_norm=null",
         "scheduler=constant", "scheduler.warmup_steps=0", "optim.lr=1e-3", "data.max_train_examples=64"],
        tmp_path / "c",
    )
    no_dropout(r.model)
    r.train()
    assert r.state.train_examples == 8
    assert max(float((p.detach() - after_a[n]).abs().max()) for n, p in r.model.named_parameters()) > 1e-4


def test_max_grad_norm_clips_the_update(tmp_path):
    common = ["trainer.max_steps=1", "scheduler=constant", "scheduler.warmup_steps=0", "data.max_train_examples=32"]

    def first_moment_norm(r) -> float:
        m = [r.optimizer.state[p]["exp_avg"] for p in r.params if p in r.optimizer.state]
        return float(torch.sqrt(sum((x.float() ** 2).sum() for x in m)))

    clipped = make_recipe([*common, "trainer.max_grad_norm=0.01"], tmp_path / "a").train()
    free = make_recipe([*common, "trainer.max_grad_norm=null"], tmp_path / "b").train()
    # exp_avg = (1 - beta1) * grad after one step.
    assert first_moment_norm(free) > 0.1 * 0.01 * 10  # the raw gradient is far above the limit
    assert first_moment_norm(clipped) == pytest.approx(0.1 * 0.01, rel=1e-3)


def test_dropout_and_max_steps(tmp_path):
    r = make_recipe(["trainer.dropout=0.3", "trainer.epochs=3", "trainer.max_steps=3", "data.max_train_examples=64"], tmp_path)
    assert r.model.dropout.p == 0.3
    assert r.total_steps == 3  # 4 steps per epoch x 3 epochs, capped
    r.train()
    assert r.state.global_step == 3 and r.state.epoch == 1
    assert len(r.state.lr_history) == 3


def test_evaluation_every_n_steps(tmp_path):
    r = make_recipe(["trainer.eval_every_steps=3", "trainer.epochs=2", "data.max_train_examples=64"], tmp_path)
    r.train()
    # 4 steps per epoch: evaluations at steps 3, 6 and at each epoch end (4, 8).
    assert [(h["step"], h["epoch_done"]) for h in r.state.history] == [(3, False), (4, True), (6, False), (8, True)]
    r2 = make_recipe(["trainer.epochs=2", "data.max_train_examples=64"], tmp_path / "per_epoch")
    r2.train()
    assert [h["step"] for h in r2.state.history] == [4, 8]


def _scripted_evaluate(monkeypatch, values: list[float], key: str):
    """Replace validation with a scripted curve for `key`; the val loss keeps falling otherwise."""
    from emotrain.recipe import TrainingRecipe

    calls = {"n": 0}

    def fake(self, data, thresholds=None):
        i = calls["n"]
        calls["n"] += 1
        metrics = {"loss": 1.0 - 0.01 * i, "macro_f1": 0.1 + 0.01 * i, "emotion/macro_f1": 0.1 + 0.01 * i}
        metrics[key] = values[i]
        return metrics, {}, {}

    monkeypatch.setattr(TrainingRecipe, "evaluate", fake)
    return calls


@pytest.mark.parametrize(
    "overrides,key,curve,stop_epoch,best_epoch",
    [
        # patience 2: best at epoch 2, two evaluations without improvement -> stop after epoch 4
        (["trainer.early_stopping.patience=2"], "loss", [1.0, 0.8, 0.85, 0.9, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], 4, 2),
        # min_delta 0.1: 0.95 and 0.92 are not improvements on 1.0 -> stop after epoch 3
        (["trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=0.1"], "loss", [1.0, 0.95, 0.92, 0.89, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6], 3, 3),
        # mode=max on another metric (val loss keeps falling): 0.2 and 0.25 do not beat 0.3 -> stop after epoch 4
        (
            ["trainer.early_stopping.patience=2", "trainer.monitor=emotion/macro_f1", "trainer.monitor_mode=max"],
            "emotion/macro_f1", [0.1, 0.3, 0.2, 0.25, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9], 4, 2,
        ),
        # no patience: the full 10 epochs
        ([], "loss", [1.0, 0.8, 0.85, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0], 10, 2),
    ],
    ids=["patience", "min_delta", "mode_max_other_metric", "off"],
)
def test_early_stopping_follows_a_scripted_validation_curve(overrides, key, curve, stop_epoch, best_epoch, tmp_path, monkeypatch):
    calls = _scripted_evaluate(monkeypatch, curve, key)
    r = make_recipe([*overrides, "trainer.epochs=10", "data.max_train_examples=16"], tmp_path)
    r.train()
    assert r.state.epoch == stop_epoch and calls["n"] == stop_epoch
    assert r.state.stopped_early == (stop_epoch < 10)
    assert r.state.best_epoch == best_epoch
    assert r.state.best_value == curve[best_epoch - 1]


def test_unknown_monitor_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="trainer.monitor=emotion/f1"):
        make_recipe(["trainer.monitor=emotion/f1"], tmp_path)


# --------------------------------------------------------------------------- attention kernel


def test_attention_auto_is_eager_on_cpu_and_sdpa_on_gpu():
    from emotrain.models.backbones import resolve_attention

    assert resolve_attention("auto", "cpu") == "eager"
    assert resolve_attention("auto", "cuda") == "sdpa"
    assert resolve_attention("sdpa", "cpu") == "sdpa"


def test_attention_kernels_reach_the_encoder_and_compute_the_same_logits(tmp_path):
    eager = make_recipe(["trainer.fast_dropout=false"], tmp_path / "eager")
    sdpa = make_recipe(["backbone.attention=sdpa", "trainer.fast_dropout=false"], tmp_path / "sdpa")
    assert eager.model.encoder.config._attn_implementation == "eager"
    assert sdpa.model.encoder.config._attn_implementation == "sdpa"
    sdpa.model.load_state_dict(eager.model.state_dict())
    eager.model.eval(), sdpa.model.eval()
    ids = torch.randint(1000, 2000, (4, 9))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0  # padding must be masked the same way by both kernels
    with torch.no_grad():
        a, b = eager.model(ids, mask), sdpa.model(ids, mask)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- fast dropout


def test_fast_dropout_drops_p_scales_the_rest_and_follows_torch_seed():
    from emotrain.models.dropout import fast_dropout

    x = torch.ones(1000, 1000)
    torch.manual_seed(3)
    y = fast_dropout(x, 0.3)
    assert float((y == 0).float().mean()) == pytest.approx(0.3, abs=2e-3)
    assert torch.unique(y).tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert float(y.mean()) == pytest.approx(1.0, abs=5e-3)  # expectation preserved
    torch.manual_seed(3)
    assert torch.equal(fast_dropout(x, 0.3), y)  # the mask stream is tied to torch's RNG state
    assert not torch.equal(fast_dropout(x, 0.3), y)
    assert fast_dropout(x, 0.3, training=False) is x and fast_dropout(x, 0.0) is x
    xb = torch.randn(64, 64, dtype=torch.bfloat16)
    assert fast_dropout(xb, 0.1).dtype == torch.bfloat16


def test_fast_dropout_gradient_is_the_mask_times_the_scale():
    from emotrain.models.dropout import fast_dropout

    x = torch.randn(50, 60, requires_grad=True)
    out = fast_dropout(x, 0.5)
    (out * 3).sum().backward()
    kept = (out != 0).float()
    assert torch.equal(x.grad, kept * 2 * 3)


def test_fast_dropout_replaces_every_dropout_and_changes_nothing_in_eval(tmp_path, monkeypatch):
    import emotrain.models.dropout as dropout_module

    fast = make_recipe([], tmp_path / "fast").model
    plain = make_recipe(["trainer.fast_dropout=false"], tmp_path / "plain").model
    n_plain = sum(type(m) is torch.nn.Dropout for m in plain.modules())
    assert n_plain > 0 and sum(type(m) is torch.nn.Dropout for m in fast.modules()) == 0
    assert sum(type(m) is dropout_module.FastDropout for m in fast.modules()) == n_plain
    assert fast.encoder.config._attn_implementation == dropout_module.FAST_EAGER
    assert plain.encoder.config._attn_implementation == "eager"
    fast.load_state_dict(plain.state_dict())
    ids = torch.randint(1000, 2000, (4, 9))
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0
    fast.eval(), plain.eval()
    with torch.no_grad():
        a, b = fast(ids, mask), plain(ids, mask)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-6)
    # In training, attention probabilities go through fast_dropout too (once per layer).
    probs = []
    real = dropout_module.fast_dropout
    monkeypatch.setattr(dropout_module, "fast_dropout", lambda x, p, training=True: probs.append(x.shape) or real(x, p, training))
    fast.train()
    fast(ids, mask)
    layers = fast.encoder.config.num_hidden_layers
    assert sum(len(s) == 4 and s[-1] == s[-2] == 9 for s in probs) == layers


def test_fast_dropout_trains_like_torch_dropout(tmp_path):
    """Same data, seed and model: only the dropout masks differ, so the loss curves agree within noise."""
    common = ["trainer.epochs=3", "trainer.batch_size=8"]
    fast = train([*TINY, *common, "checkpoint=none", "report=false"], tmp_path / "fast")
    plain = train([*TINY, *common, "checkpoint=none", "report=false", "trainer.fast_dropout=false"], tmp_path / "plain")
    for f, p in zip(fast["history"], plain["history"]):
        assert f["train_loss"] == pytest.approx(p["train_loss"], rel=0.05)
        assert f["val"]["loss"] == pytest.approx(p["val"]["loss"], rel=0.05)
    assert fast["history"][-1]["train_loss"] != plain["history"][-1]["train_loss"]  # the masks really differ


# --------------------------------------------------------------------------- host memory


HEAP_CHECK = r"""
import json, torch
from emotrain.training.host_memory import keep_freed_host_memory

def in_heap(ptr):
    for line in open("/proc/self/maps"):
        if line.rstrip().endswith("[heap]"):
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= ptr < hi:
                return True
    return False

before = torch.empty(64 << 20, dtype=torch.uint8)  # above glibc's 32 MB mmap threshold
result = {"before": in_heap(before.data_ptr())}
del before
result["applied"] = keep_freed_host_memory()
result["again"] = keep_freed_host_memory()
after = torch.empty(64 << 20, dtype=torch.uint8)
result["after"] = in_heap(after.data_ptr())
print(json.dumps(result))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/maps") or platform.libc_ver()[0] != "glibc", reason="glibc on Linux only")
def test_keep_host_memory_serves_large_blocks_from_the_heap():
    out = subprocess.run([sys.executable, "-c", HEAP_CHECK], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"before": False, "applied": True, "again": True, "after": True}


def test_keep_host_memory_is_applied_by_cpu_training_setup(tmp_path, monkeypatch):
    import emotrain.recipe as train_module

    calls = []
    monkeypatch.setattr(train_module, "keep_freed_host_memory", lambda: calls.append(1) or True)
    make_recipe([], tmp_path / "on")
    make_recipe(["trainer.keep_host_memory=false"], tmp_path / "off")
    assert calls == [1]
