"""conf/trainer (emotrain/recipe.py): accumulation, clipping, dropout, max_steps, evaluation every N steps, early
stopping and the monitor - each compared with what the option must change, in real short trainings; and the
attention kernel of conf/backbone."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import make_recipe
from emotrain.errors import ConfigError


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def no_dropout(model) -> None:
    """The tiny BERT has its own dropout (p=0.1) in embeddings, attention and outputs."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


# ============================================================================ trainer keys


def _accum_run(batch_size: int, accum: int, tmp_path):
    r = make_recipe(
        [
            f"trainer.batch_size={batch_size}",
            f"trainer.grad_accum_steps={accum}",
            "trainer.length_grouping=false",
            "trainer.dropout=0",
            "trainer.max_steps=1",
            "trainer.max_grad_norm=null",
            "scheduler=constant",
            "scheduler.warmup_steps=0",
            "optim.lr=1e-3",
            "data.max_train_examples=64",
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
        [
            "trainer.batch_size=8",
            "trainer.length_grouping=false",
            "trainer.dropout=0",
            "trainer.max_steps=1",
            "trainer.max_grad_norm=null",
            "scheduler=constant",
            "scheduler.warmup_steps=0",
            "optim.lr=1e-3",
            "data.max_train_examples=64",
        ],
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
    r = make_recipe(
        ["trainer.dropout=0.3", "trainer.epochs=3", "trainer.max_steps=3", "data.max_train_examples=64"], tmp_path
    )
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
        (
            ["trainer.early_stopping.patience=2", "trainer.early_stopping.min_delta=0.1"],
            "loss",
            [1.0, 0.95, 0.92, 0.89, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6],
            3,
            3,
        ),
        # mode=max on another metric (val loss keeps falling): 0.2 and 0.25 do not beat 0.3 -> stop after epoch 4
        (
            ["trainer.early_stopping.patience=2", "trainer.monitor=emotion/macro_f1", "trainer.monitor_mode=max"],
            "emotion/macro_f1",
            [0.1, 0.3, 0.2, 0.25, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9],
            4,
            2,
        ),
        # no patience: the full 10 epochs
        ([], "loss", [1.0, 0.8, 0.85, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 1.0], 10, 2),
    ],
    ids=["patience", "min_delta", "mode_max_other_metric", "off"],
)
def test_early_stopping_follows_a_scripted_validation_curve(
    overrides, key, curve, stop_epoch, best_epoch, tmp_path, monkeypatch
):
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
    eager = make_recipe([], tmp_path / "eager")
    sdpa = make_recipe(["backbone.attention=sdpa"], tmp_path / "sdpa")
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
