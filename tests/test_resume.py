"""Exact resume and seed reproducibility (deterministic mode, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose
from emotrain.checkpointing import load_checkpoint, resolve_checkpoint
from emotrain.errors import ConfigError
from emotrain.recipe import TrainingRecipe, run

BASE = [
    *TINY,
    "deterministic=true",
    "trainer.epochs=3",
    "data.max_train_examples=96",
    "data.max_eval_examples=48",
    "checkpoint.save_top_k=1",
    "checkpoint.export=false",
    "report=false",
]


def _run(overrides, out: Path) -> dict:
    return run(compose(overrides, out), overrides)


def _last_weights(run_dir: Path) -> dict:
    return load_checkpoint(resolve_checkpoint(run_dir, "last"))["model"]


class _Interrupted(KeyboardInterrupt):
    pass


def _train_until_epoch(overrides, out: Path, stop_epoch: int, monkeypatch) -> Path:
    """Run the recipe and kill it right after the checkpoint of `stop_epoch` is written."""
    original = TrainingRecipe._evaluate_and_checkpoint

    def evaluate_then_maybe_die(self, train_loss, epoch_done):
        stop = original(self, train_loss, epoch_done)
        if epoch_done and self.state.epoch == stop_epoch:
            raise _Interrupted()
        return stop

    monkeypatch.setattr(TrainingRecipe, "_evaluate_and_checkpoint", evaluate_then_maybe_die)
    with pytest.raises(_Interrupted):
        _run(overrides, out)
    monkeypatch.setattr(TrainingRecipe, "_evaluate_and_checkpoint", original)
    return out / "run"


def test_resume_after_two_epochs_equals_three_straight(tmp_path, monkeypatch):
    straight = _run(BASE, tmp_path / "a")
    stopped_dir = _train_until_epoch(BASE, tmp_path / "b", stop_epoch=2, monkeypatch=monkeypatch)
    assert not (stopped_dir / "metrics.json").exists()
    assert json.loads((stopped_dir / "checkpoints" / "last.json").read_text())["epoch"] == 2

    resumed = _run([*BASE, f"resume={stopped_dir}"], tmp_path / "c")  # a run dir means its last checkpoint
    assert resumed["resumed_from"].startswith(str(stopped_dir))
    assert resumed["epochs_run"] == straight["epochs_run"] == 3
    assert resumed["global_steps"] == straight["global_steps"]

    a, c = _last_weights(tmp_path / "a" / "run"), _last_weights(tmp_path / "c" / "run")
    assert a.keys() == c.keys()
    for k in a:
        assert torch.equal(a[k], c[k]), f"weights differ after resume: {k}"
    assert resumed["test"] == straight["test"]
    assert resumed["best_val"] == straight["best_val"]
    assert [h["val"]["loss"] for h in resumed["history"]] == [h["val"]["loss"] for h in straight["history"]]


def test_resume_refuses_a_different_model_shape(tmp_path):
    _run([*BASE, "trainer.epochs=1"], tmp_path / "a")
    with pytest.raises(ConfigError, match=r"backbone\.hidden_size"):
        _run([*BASE, "backbone.hidden_size=64", f"resume={tmp_path / 'a' / 'run'}"], tmp_path / "b")


def test_resume_logs_other_config_changes(tmp_path, caplog):
    _run([*BASE, "trainer.epochs=1"], tmp_path / "a")
    with caplog.at_level("WARNING", logger="emotrain"):
        result = _run([*BASE, "trainer.epochs=2", "optim.lr=5e-4", f"resume={tmp_path / 'a' / 'run'}"], tmp_path / "b")
    assert result["epochs_run"] == 2
    assert any("optim.lr" in r.getMessage() and "trainer.epochs" in r.getMessage() for r in caplog.records)


def test_same_seed_is_bitwise_reproducible_and_another_seed_is_not(tmp_path):
    overrides = [*BASE, "trainer.epochs=1"]
    first = _run(overrides, tmp_path / "a")
    second = _run(overrides, tmp_path / "b")
    other = _run([*overrides, "seed=7"], tmp_path / "c")
    wa, wb, wc = (_last_weights(tmp_path / d / "run") for d in "abc")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert first["test"] == second["test"] and first["history"][0]["val"] == second["history"][0]["val"]
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert first["history"][0]["val"]["loss"] != other["history"][0]["val"]["loss"]
