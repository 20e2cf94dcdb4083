"""Ctrl-C saves an `interrupted` checkpoint at an optimiser step; resuming from it is exact."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, TINY, compose, subprocess_env
from emotrain.checkpointing import load_checkpoint, resolve_checkpoint
from emotrain.recipe import TrainingInterrupted, TrainingRecipe, run

BASE = [
    *TINY,
    "deterministic=true",
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "data.max_train_examples=96",
    "data.max_eval_examples=32",
    "checkpoint.export=false",
    "report=false",
]


def test_interrupt_mid_epoch_then_resume_equals_straight_run(tmp_path, monkeypatch):
    straight = run(compose(BASE, tmp_path / "a"), BASE)

    # Ask for a stop while the 5th optimiser step of epoch 2 runs (as the SIGINT handler would).
    original_step = TrainingRecipe._evaluate_and_checkpoint
    recipe = TrainingRecipe(compose(BASE, tmp_path / "b"), BASE).setup()
    calls = {"n": 0}
    real_step = recipe.mp.step

    def step_and_flag(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12 + 5:  # 12 steps per epoch (96 / 8)
            recipe.interrupt_requested = True
        return real_step(*args, **kwargs)

    monkeypatch.setattr(recipe.mp, "step", step_and_flag)
    with pytest.raises(TrainingInterrupted) as info:
        recipe.train()
    ckpt = info.value.checkpoint
    assert "_interrupted_" in ckpt.name and ckpt.exists()
    assert "resume with: python -m emotrain" in str(info.value) and f"resume={ckpt}" in str(info.value)
    meta = load_checkpoint(ckpt)
    assert meta["global_step"] == 17 and meta["extra"]["state"]["epoch_batches_done"] == 5

    resumed = run(compose([*BASE, f"resume={ckpt}"], tmp_path / "c"), BASE)
    a = load_checkpoint(resolve_checkpoint(tmp_path / "a" / "run", "last"))["model"]
    c = load_checkpoint(resolve_checkpoint(tmp_path / "c" / "run", "last"))["model"]
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert resumed["test"] == straight["test"]
    assert resumed["history"][-1]["train_loss"] == pytest.approx(straight["history"][-1]["train_loss"], rel=1e-6)
    assert original_step is TrainingRecipe._evaluate_and_checkpoint


def test_sigint_on_the_cli_saves_and_prints_the_resume_command(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "emotrain", *BASE, "trainer.epochs=50", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env()
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoints" / "last.json").exists():
        time.sleep(0.2)
    assert (run_dir / "checkpoints" / "last.json").exists(), "training never reached its first checkpoint"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    line = next(x for x in err.splitlines() if "resume with:" in x)
    ckpt = Path(line.split("saved ", 1)[1].split(";", 1)[0])
    assert ckpt.exists() and "_interrupted_" in ckpt.name
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "interrupted" and status["checkpoint"] == str(ckpt)
