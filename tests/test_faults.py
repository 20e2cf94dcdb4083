"""A long run is never lost: SIGKILL at any point, a diverging loss or a full disk.

Each faulty run is a real `emotrain` process (the console-script function with sys.argv set)
started through HARNESS, which first patches one function so that the process kills itself
with SIGKILL at the chosen point, makes the loss NaN, or makes a checkpoint write fail with
ENOSPC. Killed runs are then resumed with `emotrain ... resume=<run dir>` and must end exactly
where an uninterrupted run ends (deterministic mode, CPU, one thread).

An output directory that cannot be created is in the bad-input corpus (tests/test_bad_inputs.py:
output_dir_under_a_file, run_dir_under_a_file, run_dir_is_a_file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from test_bad_inputs import Case, run_batch

from conftest import REPO_ROOT, subprocess_env
from emotrain.checkpointing import load_checkpoint, resolve_checkpoint

# 48 training examples / batch 8 = 6 optimiser steps per epoch; 24 eval examples / 8 = 3 eval batches.
BASE = [
    "backbone=tiny",
    "precision=fp32",
    "optim.fused=false",
    "trainer.progress=false",
    "trainer.num_threads=1",
    "deterministic=true",
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "trainer.eval_batch_size=8",
    "data.max_train_examples=48",
    "data.max_eval_examples=24",
    "checkpoint.save_top_k=1",
    "checkpoint.export=false",
    "report=false",
]
STEPS_PER_EPOCH = 6

HARNESS = r"""
import errno, io, os, signal, sys
from pathlib import Path

point, n = sys.argv[1], int(sys.argv[2])
sys.argv = ["emotrain", *sys.argv[3:]]
calls = {"n": 0}


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if point == "step":  # inside the n-th optimiser step
    from emotrain.training.precision import MixedPrecisionTrainer

    real_step = MixedPrecisionTrainer.step

    def step(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            die()
        return real_step(self, *args, **kwargs)

    MixedPrecisionTrainer.step = step

elif point == "evaluate":  # at the 2nd batch of the n-th evaluation
    import emotrain.recipe as train_module

    real_evaluate = train_module.evaluate

    def evaluate(model, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            real_forward, batches = model.forward, {"n": 0}

            def forward(*a, **k):
                batches["n"] += 1
                if batches["n"] == 2:
                    die()
                return real_forward(*a, **k)

            model.forward = forward
        return real_evaluate(model, *args, **kwargs)

    train_module.evaluate = evaluate

elif point in ("checkpoint", "pointer"):  # half-way through writing the n-th checkpoint (.pt) or last.json
    import emotrain.checkpointing
    import emotrain.io

    real_atomic_write = emotrain.io.atomic_write

    def atomic_write(path, write, binary=False):
        target = Path(path).suffix == ".pt" if point == "checkpoint" else Path(path).name == "last.json"
        if target:
            calls["n"] += 1
            if calls["n"] == n:
                def half(fh):
                    buf = io.BytesIO() if binary else io.StringIO()
                    write(buf)
                    data = buf.getvalue()
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                    os.fsync(fh.fileno())
                    die()

                return real_atomic_write(path, half, binary)
        return real_atomic_write(path, write, binary)

    emotrain.io.atomic_write = atomic_write  # write_json (pointers, metrics) looks it up here
    emotrain.checkpointing.atomic_write = atomic_write  # checkpoint files

elif point == "diverge":  # the training loss is NaN from the n-th training batch on
    import torch
    from emotrain.training.losses import MultiTaskLoss

    real_loss = MultiTaskLoss.forward

    def forward(self, *args, **kwargs):
        loss, parts = real_loss(self, *args, **kwargs)
        if torch.is_grad_enabled():  # training batches only; evaluation runs under no_grad
            calls["n"] += 1
            if calls["n"] >= n:
                loss = loss * float("nan")
        return loss, parts

    MultiTaskLoss.forward = forward

elif point == "enospc":  # the disk fills up 4 kB into the n-th checkpoint file
    import emotrain.checkpointing

    real_atomic_write = emotrain.checkpointing.atomic_write

    class FullDisk(io.RawIOBase):
        def __init__(self, fh):
            self.fh, self.room = fh, 4096

        def writable(self):
            return True

        def write(self, b):
            b = bytes(b)
            if len(b) > self.room:
                self.fh.write(b[: self.room])
                self.room = 0
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.room -= len(b)
            return self.fh.write(b)

    def atomic_write(path, write, binary=False):
        if Path(path).suffix == ".pt":
            calls["n"] += 1
            if calls["n"] == n:
                return real_atomic_write(path, lambda fh: write(FullDisk(fh)), binary)
        return real_atomic_write(path, write, binary)

    emotrain.checkpointing.atomic_write = atomic_write

else:
    raise SystemExit(f"unknown point {point}")

from emotrain.__main__ import main

main()
"""

KILLS = {
    # name: (harness point, n)
    "mid_epoch": ("step", STEPS_PER_EPOCH + 2),  # the 2nd optimiser step of epoch 2
    "during_evaluation": ("evaluate", 2),  # epoch 2's validation, 2nd batch
    "during_checkpoint_write": ("checkpoint", 2),  # epoch 2's .pt, half written
    "during_pointer_write": ("pointer", 2),  # epoch 2's last.json, half written (its .pt is complete)
}


def _harness(point: str, n: int, args: list[str], work: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", HARNESS, point, str(n), *args],
        cwd=REPO_ROOT,
        env=subprocess_env(work / "cache"),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """The faulty runs (three processes at a time); then the uninterrupted run and the resumes.

    The latter are ordinary command lines, run by test_bad_inputs' batch runner: one process calling the
    console-script function per command (test_batch_runner_matches_real_processes shows it is what a
    user sees), which saves a torch import per run.
    """
    work = tmp_path_factory.mktemp("faults")
    runs = work / "runs"
    jobs = {name: (point, n, [*BASE, f"hydra.run.dir={runs / name}"]) for name, (point, n) in KILLS.items()}
    jobs["diverge"] = (
        "diverge",
        STEPS_PER_EPOCH + 3,
        [*BASE, "trainer.max_nonfinite_steps=3", "report=true", f"hydra.run.dir={runs / 'diverge'}"],
    )
    jobs["enospc"] = ("enospc", 2, [*BASE, f"hydra.run.dir={runs / 'enospc'}"])
    with ThreadPoolExecutor(max_workers=3) as pool:
        first = dict(zip(jobs, pool.map(lambda job: _harness(*job, work), jobs.values())))
    # What each kill left half-written, before the resumes clean it up.
    leftovers = {name: sorted(p.name for p in (runs / name / "checkpoints").glob(".*.tmp")) for name in KILLS}
    cases = [Case("straight", BASE, valid=True)] + [
        Case(f"{name}_resumed", [*BASE, f"resume={runs / name}"], valid=True) for name in KILLS
    ]
    resumed = run_batch(cases, work)  # run dirs: work/runs/<case name>
    return runs, first, resumed, leftovers


def _checkpoint_files_are_whole(run_dir: Path) -> list[Path]:
    """Every *.pt under checkpoints/ loads; every pointer parses and names an existing file. Returns the .pt files."""
    directory = run_dir / "checkpoints"
    files = sorted(directory.glob("*.pt"))
    for path in files:
        load_checkpoint(path)  # raises CheckpointError on a truncated file
    for pointer in directory.glob("*.json"):
        data = json.loads(pointer.read_text())
        names = [r["path"] for r in data["checkpoints"]] if pointer.name == "index.json" else [data["path"]]
        if pointer.name != "index.json":
            assert (directory / names[0]).is_file(), f"{pointer} points to a missing file"
    # an interrupted atomic write leaves at most a hidden temporary file, never a file under a checkpoint name
    assert all(
        p.name.startswith(".") and p.name.endswith(".tmp")
        for p in directory.iterdir()
        if p.suffix not in (".pt", ".json")
    ), list(directory.iterdir())
    return files


@pytest.mark.parametrize("kill", list(KILLS))
def test_sigkill_then_resume_equals_an_uninterrupted_run(faults, kill):
    runs, first, resumed, leftovers = faults
    straight = resumed["straight"]
    assert straight.rc == 0, straight.err[-3000:]
    killed = first[kill]
    assert killed.returncode == -9, f"the process was not killed: rc={killed.returncode}\n{killed.stderr[-3000:]}"
    killed_dir = runs / kill
    assert not (killed_dir / "metrics.json").exists()
    files = _checkpoint_files_are_whole(killed_dir)
    assert files, "the epoch-1 checkpoint is gone"
    last = resolve_checkpoint(killed_dir, "last")
    assert load_checkpoint(last)["epoch"] == 1  # the newest complete checkpoint the pointers know
    if kill == "during_checkpoint_write":
        assert [n for n in leftovers[kill] if ".pt." in n], "expected the half-written temporary file"
    # The resume removed what the kill left half-written (and said so in its log).
    assert not list((killed_dir / "checkpoints").glob(".*.tmp"))
    if leftovers[kill]:
        assert "leftover temporary" in (runs / f"{kill}_resumed" / "emotrain.log").read_text()

    proc = resumed[f"{kill}_resumed"]
    assert proc.rc == 0, proc.err[-3000:]
    assert "Traceback" not in proc.err and not proc.err.strip()
    a = json.loads((runs / "straight" / "metrics.json").read_text())
    b = json.loads((runs / f"{kill}_resumed" / "metrics.json").read_text())
    assert b["resumed_from"] == str(last)
    assert b["test"] == a["test"]  # bitwise-equal metrics
    assert b["best_val"] == a["best_val"] and b["global_steps"] == a["global_steps"] == 2 * STEPS_PER_EPOCH
    assert [h["val"]["loss"] for h in b["history"]] == [h["val"]["loss"] for h in a["history"]]
    wa = load_checkpoint(resolve_checkpoint(runs / "straight", "last"))["model"]
    wb = load_checkpoint(resolve_checkpoint(runs / f"{kill}_resumed", "last"))["model"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), "final weights differ"
    _checkpoint_files_are_whole(runs / f"{kill}_resumed")


def _one_error_line(proc) -> str:
    """The process exited 2 with exactly one non-empty stderr line and no traceback; that line."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_divergence_stops_with_one_line_and_keeps_the_last_good_checkpoint(faults):
    runs, first, _, _ = faults
    proc = first["diverge"]
    run_dir = runs / "diverge"
    line = _one_error_line(proc)
    last = resolve_checkpoint(run_dir, "last")
    assert line.startswith("emotrain: error: loss was non-finite for 3 consecutive steps in epoch 2")
    assert f"the last good checkpoint is {last}" in line and f"resume={run_dir}" in line
    # the last good checkpoint: epoch 1, finite, loadable
    files = _checkpoint_files_are_whole(run_dir)
    assert [load_checkpoint(p)["epoch"] for p in files] == [1]
    assert all(torch.isfinite(t).all() for t in load_checkpoint(last)["model"].values())
    # the report so far, and the status
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "diverged" and status["error"] == line.removeprefix("emotrain: error: ")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and metrics["error"] == status["error"]
    assert metrics["epochs_run"] == 1 and len(metrics["history"]) == 1 and metrics["best_epoch"] == 1
    assert metrics["global_steps"] == STEPS_PER_EPOCH + 2  # two good steps in epoch 2, then three NaN batches
    assert metrics["test"] and all(v == v for v in metrics["test"].values())  # the best (epoch 1) weights, tested
    assert "model_dir" not in metrics and not (run_dir / "model").exists()  # a diverged run is not exported
    report = json.loads((run_dir / "report" / "report.json").read_text())
    assert report["epochs"] == 1 and (run_dir / "report" / "loss_curves.png").is_file()
    assert "diverged" in (run_dir / "report" / "summary.txt").read_text()


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(faults):
    runs, first, _, _ = faults
    proc = first["enospc"]
    run_dir = runs / "enospc"
    line = _one_error_line(proc)
    directory = run_dir / "checkpoints"
    assert line.startswith(f"emotrain: error: cannot write the checkpoint {directory}/") and "_epoch002_" in line
    assert "No space left on device" in line and "free disk space" in line and f"resume={run_dir}" in line
    files = _checkpoint_files_are_whole(run_dir)
    assert [load_checkpoint(p)["epoch"] for p in files] == [1]  # the previous checkpoint, intact
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")], "the failed write left its temporary file"
    assert json.loads((directory / "last.json").read_text())["epoch"] == 1
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["error"] == line.removeprefix("emotrain: error: ")


def test_a_failed_write_names_the_file_and_leaves_the_old_content(tmp_path, monkeypatch):
    """emotrain.io.atomic_write: an ENOSPC while writing keeps the old file and names the path."""
    import errno

    from emotrain.io import atomic_write, write_json

    target = write_json(tmp_path / "metrics.json", {"old": True})

    def fill_up(fh):
        fh.write('{"new": ')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError) as info:
        atomic_write(target, fill_up)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]

    from emotrain.cli import os_error_message

    message = os_error_message(info.value)
    assert (
        str(target) in message
        and "No space left on device" in message
        and "free disk space" in message
        and "\n" not in message
    )
