"""Output integrity: one run per directory (refused reuse, a lock against concurrent runs), checkpoint names that
stay inside the run directory, outputs that follow the umask, leftovers of a killed write removed on resume."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import emotrain
from conftest import QUICK, REPO_ROOT, run_emotrain, subprocess_env

# Tiny runs that write everything a real run writes (checkpoints, model/, report).
FULL = [*QUICK, "checkpoint=default", "report=true", "data.max_train_examples=64"]


def cli(args: list[str], cwd: Path, umask: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    preexec = (lambda: os.umask(umask)) if umask is not None else None
    return run_emotrain(args, cwd, timeout=300, preexec_fn=preexec, **kwargs)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != ".emotrain.lock"
    }


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


def test_a_second_run_into_a_used_directory_is_refused_and_leaves_it_untouched(tmp_path):
    run = tmp_path / "run"
    assert cli([*FULL, f"hydra.run.dir={run}"], tmp_path).returncode == 0
    before = snapshot(run)
    line = one_error_line(cli([*FULL, "trainer.dropout=0.2", f"hydra.run.dir={run}"], tmp_path))
    assert str(run) in line and "already holds a run" in line and f"resume={run}" in line
    assert snapshot(run) == before  # not even .hydra/ or the log was rewritten
    # Continuing that run in its own directory is the one reuse allowed.
    resumed = cli([*FULL, "trainer.epochs=2", f"resume={run}", f"hydra.run.dir={run}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 2 and metrics["resumed_from"].startswith(str(run))
    best = json.loads((run / "checkpoints" / "best.json").read_text())
    assert (run / "checkpoints" / best["path"]).is_file()


def test_a_directory_with_other_files_gets_one_warning(tmp_path):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("my notes\n")
    proc = cli([*FULL, f"hydra.run.dir={run}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    console = proc.stdout + proc.stderr
    warned = [line for line in console.splitlines() if "already holds other files" in line]
    assert len(warned) == 1 and "(notes.txt)" in warned[0] and str(run) in warned[0]
    assert (run / "notes.txt").read_text() == "my notes\n" and (run / "metrics.json").is_file()


def test_a_directory_in_use_by_another_process_is_refused(tmp_path):
    from emotrain.rundir import claim_run_dir

    run = tmp_path / "run"
    with claim_run_dir(run):  # this test process plays the other run
        line = one_error_line(cli([*FULL, f"hydra.run.dir={run}"], tmp_path))
        assert "in use by another emotrain process" in line and f"pid {os.getpid()}" in line
        assert not (run / "metrics.json").exists() and not (run / ".hydra").exists()
    assert cli([*FULL, f"hydra.run.dir={run}"], tmp_path).returncode == 0  # the lock went with its holder


def test_two_concurrent_runs_into_one_directory_leave_one_consistent_run(tmp_path):
    run = tmp_path / "run"
    env = subprocess_env(tmp_path / "cache")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "emotrain", *FULL, f"seed={seed}", f"hydra.run.dir={run}"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "in use by another emotrain process" in refused or "already holds a run" in refused
    metrics = json.loads((run / "metrics.json").read_text())
    winner_seed = metrics["seed"]
    index = json.loads((run / "checkpoints" / "index.json").read_text())
    for record in index["checkpoints"]:
        ckpt = run / "checkpoints" / record["path"]
        assert ckpt.is_file()
    import torch

    best = json.loads((run / "checkpoints" / "best.json").read_text())
    saved = torch.load(run / "checkpoints" / best["path"], map_location="cpu", weights_only=True)
    assert saved["hyperparameters"]["seed"] == winner_seed  # model, pointers and metrics come from one run


def test_the_python_api_refuses_a_used_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTRAIN_CACHE", str(tmp_path / "cache"))
    emotrain.train(QUICK, output_dir=tmp_path / "run")
    with pytest.raises(emotrain.ConfigError, match="already holds a run"):
        emotrain.train(QUICK, output_dir=tmp_path / "run")


def test_a_reused_sweep_directory_is_refused(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *QUICK, "seed=1,2", f"hydra.sweep.dir={sweep}"]
    assert cli(args, tmp_path).returncode == 0
    before = snapshot(sweep)
    proc = cli(args, tmp_path)
    assert proc.returncode == 2 and "already holds runs" in proc.stderr and "hydra.sweep.dir" in proc.stderr
    assert snapshot(sweep) == before


def test_checkpoint_prefix_cannot_leave_the_run_directory(tmp_path):
    from emotrain.checkpointing import save_checkpoint
    from emotrain.errors import ConfigError

    line = one_error_line(cli([*FULL, "checkpoint.prefix=../escaped", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert "checkpoint.prefix='../escaped'" in line
    assert not list(tmp_path.rglob("escaped*"))
    with pytest.raises(ConfigError, match="prefix"):
        save_checkpoint(torch_module(), None, None, 0, 1.0, {}, {}, tmp_path / "lib", prefix="sub/x")


def torch_module():
    import torch

    return torch.nn.Linear(2, 2)


@pytest.mark.parametrize("umask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_every_output_follows_the_umask(umask, file_mode, dir_mode, tmp_path):
    """Temporary files are created private (0600); renamed into place they must get the modes the umask gives."""
    run = tmp_path / "run"
    proc = cli([*FULL, f"hydra.run.dir={run}"], tmp_path, umask=umask)
    assert proc.returncode == 0, proc.stderr[-2000:]
    export = subprocess.run(
        [sys.executable, "-m", "emotrain.export", f"checkpoint={run}", f"out={run / 'bundle'}"],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
    )
    assert export.returncode == 0, export.stderr[-2000:]
    wrong = []
    for p in [run, *run.rglob("*")]:
        if p.name == ".emotrain.lock":
            continue
        mode, expected = stat.S_IMODE(p.stat().st_mode), dir_mode if p.is_dir() else file_mode
        if mode != expected:
            wrong.append(f"{p.relative_to(run)}: {oct(mode)}")
    assert not wrong, wrong
    for name in ("metrics.json", "checkpoints/best.json", "model/model.safetensors", "bundle/model.onnx", "report"):
        assert (run / name).exists(), name


def test_leftover_temporaries_of_a_killed_write_are_removed_on_resume(tmp_path):
    run = tmp_path / "run"
    assert cli([*FULL, f"hydra.run.dir={run}"], tmp_path).returncode == 0
    leftovers = [
        run / "checkpoints" / ".emotrain_20260101_000000_epoch002_loss1.0000.pt.a1b2c3.tmp",
        run / ".metrics.json.x9y8.tmp",
    ]
    for p in leftovers:
        p.write_bytes(b"partial")
    staging = run / ".model.q1w2.tmp"
    staging.mkdir()
    (staging / "model.safetensors").write_bytes(b"partial")
    keep = run / "checkpoints" / "notes.tmp"  # not one of ours (no leading dot): kept
    keep.write_text("mine")
    proc = cli([*FULL, "trainer.epochs=2", f"resume={run}", f"hydra.run.dir={tmp_path / 'resumed'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not any(p.exists() for p in [*leftovers, staging]) and keep.exists()
    assert "leftover temporary" in (tmp_path / "resumed" / "emotrain.log").read_text()


def test_leftovers_of_a_running_process_are_kept(tmp_path):
    import fcntl

    from emotrain.rundir import LOCK_FILE, remove_stale_temporaries

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    live = run / "checkpoints" / ".emotrain_x.pt.abc.tmp"
    live.write_bytes(b"being written")
    code = (
        "import sys; from emotrain.rundir import remove_stale_temporaries; print(remove_stale_temporaries(sys.argv[1]))"
    )
    with open(run / LOCK_FILE, "w") as held:  # a process still running (and writing) there holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        other = subprocess.run(
            [sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
        )
        assert other.returncode == 0 and other.stdout.strip() == "0" and live.exists()
    assert remove_stale_temporaries(run) == 1 and not live.exists()


def test_predict_output_stays_valid_utf8_for_invalid_input_bytes(tmp_path, sample_run_bundle):
    stdin = b'\xef\xbb\xbffirst line\nbad \xff\xfe bytes\n{"text": "escaped", "id": "\\ud800"}\n'  # a BOM first
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain.inference", "--model", str(sample_run_bundle), "--input", "auto"],
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8:surrogateescape"},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.decode("utf-8").splitlines()  # strict: raises on any invalid byte
    records = [json.loads(line) for line in lines]
    assert [r["text"] for r in records] == ["first line", "bad \ufffd\ufffd bytes", "escaped"]
    assert records[2]["id"] == "\ud800"  # carried as a JSON escape, not raw bytes
    warnings = proc.stderr.decode("utf-8").strip().splitlines()
    assert len(warnings) == 1 and "stdin line 2" in warnings[0] and "not valid UTF-8" in warnings[0]


@pytest.fixture(scope="module")
def sample_run_bundle(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("bundle_run")
    run = work / "run"
    assert cli([*FULL, f"hydra.run.dir={run}"], work).returncode == 0
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain.export", f"checkpoint={run}", "quantize=false"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return run / "bundle"
