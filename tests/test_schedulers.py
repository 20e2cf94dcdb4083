"""conf/scheduler (emotrain/training/schedulers.py): every schedule against its formula; warmup; the recorded lr."""

from __future__ import annotations

import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from conftest import make_recipe
from emotrain.config import schema_for
from emotrain.errors import ConfigError
from emotrain.training.schedulers import build_scheduler


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def no_dropout(model) -> None:
    """The tiny BERT has its own dropout (p=0.1) in embeddings, attention and outputs."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


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
    with pytest.raises(ConfigError, match="not below this run's 10 optimiser steps"):  # never out of warm-up
        lr_curve("linear", 10, [1], warmup_steps=10)


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant", "cosine_restarts"])
def test_recorded_lr_per_step_follows_the_schedule(kind, tmp_path):
    # 64 examples / batch 16 = 4 steps per epoch, 2 epochs = 8 optimiser steps, warmup 2.
    r = make_recipe(
        [
            f"scheduler={kind}",
            "scheduler.warmup_steps=2",
            "optim.lr=1e-3",
            "trainer.epochs=2",
            "data.max_train_examples=64",
        ],
        tmp_path,
    )
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
