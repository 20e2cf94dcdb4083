"""Hyperparameter grids, failed jobs, sweep directories, launchers and sweeper presets as real multiruns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import CONFIG_DIR, REPO_ROOT, quick, run_emotrain, subprocess_env

QUICK = quick("data.max_train_examples=40", max_eval=24)
GRID = ["optim.lr=1e-4,3e-3", "trainer.dropout=0.0,0.3"]
# One grid value the job rejects (ConfigError before training), crossed with 2 folds.
FAILING = ["sweep=kfold", "cv.k=2", "trainer.dropout=0.1,1.5"]


def emotrain_cmd(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "emotrain", *args]


def env_for(cwd: Path) -> dict:
    return subprocess_env(cwd / "cache")


def sweep_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "multirun").glob("*/*/multirun.yaml"))


def task_overrides(sweep: Path) -> list[str]:
    return yaml.safe_load((sweep / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]


@pytest.fixture(scope="module")
def two_multiruns(tmp_path_factory):
    """A 2 x 2 grid and a sweep with failing jobs, started together from one directory with the
    default hydra.sweep.dir (multirun/<date>/<time with microseconds>)."""
    cwd = tmp_path_factory.mktemp("sweeps")
    procs = {
        name: subprocess.Popen(
            emotrain_cmd(["-m", *args, *QUICK]),
            cwd=cwd,
            env=env_for(cwd),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in (("grid", GRID), ("failing", FAILING))
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, out, err)
    dirs = {}
    for sweep in sweep_dirs(cwd):
        dirs["failing" if "sweep=kfold" in task_overrides(sweep) else "grid"] = sweep
    return cwd, results, dirs


def test_two_multiruns_started_together_write_different_dirs(two_multiruns):
    cwd, results, dirs = two_multiruns
    found = sweep_dirs(cwd)
    assert len(found) == 2 and found[0] != found[1], found
    assert set(dirs) == {"grid", "failing"}
    assert len([p for p in dirs["grid"].iterdir() if p.is_dir()]) == 4
    assert len([p for p in dirs["failing"].iterdir() if p.is_dir()]) == 4


def test_grid_two_by_two_ranked(two_multiruns, capsys):
    from emotrain.summarize import main as summarize_main

    _, results, dirs = two_multiruns
    code, out, err = results["grid"]
    assert code == 0, err[-3000:]
    assert "SWEEP RESULTS" in out  # the end-of-sweep callback
    sweep = dirs["grid"]
    objective = {}
    for job in sweep.iterdir():
        if job.is_dir():
            m = json.loads((job / "metrics.json").read_text())
            o = dict(x.split("=", 1) for x in m["overrides"])
            objective[(o["optim.lr"], o["trainer.dropout"])] = m["objective"]["value"]
    assert len(objective) == 4
    assert summarize_main([str(sweep), "--no-write"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["rank"])
    header = lines[start].split()
    assert header[:3] == ["rank", "optim.lr", "trainer.dropout"] and header[3:5] == ["n", "of"]
    rows = [line.split() for line in lines[start + 1 : start + 5]]
    assert [(r[1], r[2]) for r in rows] == sorted(objective, key=objective.get)  # lowest val loss first
    for r in rows:
        assert r[3:5] == ["1", "1"] and float(r[5]) == pytest.approx(objective[(r[1], r[2])], abs=1e-6)


def test_failed_jobs_reported_as_missing(two_multiruns, capsys):
    from emotrain.summarize import summarize

    _, results, dirs = two_multiruns
    code, out, err = results["failing"]
    assert code != 0  # Hydra reports the failure after running the remaining jobs
    assert (
        "emotrain: error in job 1" in err and "trainer.dropout=1.5: must be in [0, 1)" in err and "Traceback" not in err
    )
    sweep = dirs["failing"]
    # jobs in order (cv.fold, dropout): (0, 0.1) (0, 1.5) (1, 0.1) (1, 1.5)
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_fold0", "1_fold0", "2_fold1", "3_fold1"]
    for name in ("1_fold0", "3_fold1"):
        status = json.loads((sweep / name / "status.json").read_text())
        assert status["status"] == "failed" and status["error"] == "trainer.dropout=1.5: must be in [0, 1)"
    s = summarize(sweep, write=True)
    assert s.exit_code == 1 and not s.complete
    assert sorted(m["job"] for m in s.data["missing"]) == ["1_fold0", "3_fold1"]
    assert "1_fold0: failed (trainer.dropout=1.5: must be in [0, 1))" in s.text
    groups = {g["overrides"]["trainer.dropout"]: g for g in s.data["groups"]}
    assert groups["0.1"]["n"] == 2 and groups["0.1"]["of"] == 2 and groups["0.1"]["rank"] == 1
    assert groups["1.5"]["n"] == 0 and groups["1.5"]["missing_folds"] == [0, 1] and groups["1.5"]["mean"] is None
    assert "folds without results: 0, 1" in s.text


def test_joblib_launcher_two_workers(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "sweep"
    proc = run_emotrain(
        [
            "-m",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
            "optim.lr=1e-4,1e-3",
            *QUICK,
            f"hydra.sweep.dir={sweep}",
        ],
        tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout
    for job in ("0", "1"):
        assert json.loads((sweep / job / "metrics.json").read_text())["status"] == "completed"
    assert "SWEEP RESULTS" in proc.stdout and "Jobs: 2 of 2 completed" in proc.stdout


def test_optuna_search_minimises_val_loss(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = run_emotrain(
        ["hparams_search=optuna", "hydra.sweeper.n_trials=2", *QUICK, f"hydra.sweep.dir={sweep}"], tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Directions: ['minimize']" in proc.stdout
    values = []
    for job in ("0", "1"):
        m = json.loads((sweep / job / "metrics.json").read_text())
        assert m["config"]["loss"]["kind"] == "focal"
        keys = {o.split("=", 1)[0] for o in m["overrides"]}
        assert {"optim.lr", "optim.weight_decay", "trainer.dropout", "loss.gamma"} <= keys
        values.append(m["objective"]["value"])
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(values))


def compose_hydra(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    import emotrain.callbacks  # noqa: F401  (resolvers)
    import emotrain.config  # noqa: F401

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_sweep_kfold_preset_and_fold_subdirs():
    from omegaconf import OmegaConf

    cfg = compose_hydra(["sweep=kfold", "cv.k=4"])
    assert cfg.cv.kind.value == "kfold" and cfg.hydra.mode.name == "MULTIRUN"
    assert cfg.hydra.sweeper.params["cv.fold"] == "range(4)"
    # job dirs show the job number and the fold (conf/hydra/sweep_subdir/kfold.yaml, picked by cv=kfold)
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${hydra.job.num}_fold${cv.fold}"
    assert (
        OmegaConf.to_container(compose_hydra(["cv=kfold"]).hydra.sweep)["subdir"] == "${hydra.job.num}_fold${cv.fold}"
    )
    assert OmegaConf.to_container(compose_hydra([]).hydra.sweep)["subdir"] == "${hydra.job.num}"
    assert cfg.hydra.callbacks.sweep_summary.enabled is True


def test_optuna_direction_follows_monitor_mode():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    assert compose_hydra(["hparams_search=optuna"]).hydra.sweeper.direction == "minimize"
    cfg = compose_hydra(["hparams_search=optuna", "trainer.monitor=macro_f1", "trainer.monitor_mode=max"])
    assert cfg.hydra.sweeper.direction == "maximize"
    assert set(cfg.hydra.sweeper.params) == {"optim.lr", "optim.weight_decay", "trainer.dropout", "loss.gamma"}
    assert cfg.loss.kind.value == "focal"
    ce = compose_hydra(["hparams_search=optuna_ce"])
    assert "loss.gamma" not in ce.hydra.sweeper.params and ce.loss.kind.value == "default"


@pytest.mark.parametrize("preset,target", [("slurm", "SlurmLauncher"), ("slurm_local", "LocalLauncher")])
def test_submitit_presets_compose(preset, target):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose_hydra([f"hydra/launcher={preset}", "hydra.launcher.timeout_min=30"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith(target) and launcher.timeout_min == 30
    if preset == "slurm":
        cfg = compose_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=2"])
        assert cfg.hydra.launcher.partition == "gpu" and cfg.hydra.launcher.gpus_per_node == 2


def test_submitit_local_sweep_runs_and_summarizes(tmp_path):
    """hydra/launcher=slurm_local (submitit's local executor) runs a real sweep; summarize reads it."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    import subprocess
    import sys

    sweep_dir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "emotrain",
        "-m",
        "hydra/launcher=slurm_local",
        "backbone=tiny",
        "precision=fp32",
        "trainer.epochs=1",
        "trainer.progress=false",
        "checkpoint=none",
        "report=false",
        "trainer.num_threads=1",
        "data.max_train_examples=48",
        "data.max_eval_examples=16",
        "optim.lr=1e-4,1e-3",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(sweep_dir.glob("*/metrics.json"))
    assert len(jobs) == 2
    summary = subprocess.run(
        [sys.executable, "-m", "emotrain.summarize", str(sweep_dir), "--no-write"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert summary.returncode == 0, summary.stderr[-2000:]
    assert "Jobs: 2 of 2 completed, 2 groups" in summary.stdout
    ranked = [line.split() for line in summary.stdout.splitlines() if line.strip()[:1].isdigit() and "0.00" in line]
    best = {
        json.loads(p.read_text())["config"]["optim"]["lr"]: json.loads(p.read_text())["objective"]["value"]
        for p in jobs
    }
    assert float(ranked[0][1]) == min(best, key=best.get)  # lowest val loss ranked first


def test_slurm_preset_reads_defaults_from_the_environment(monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    monkeypatch.setenv("EMOTRAIN_SLURM_PARTITION", "a100")
    monkeypatch.setenv("EMOTRAIN_SLURM_GPUS", "4")
    monkeypatch.setenv("EMOTRAIN_SLURM_TIME_MIN", "90")
    launcher = compose_hydra(["hydra/launcher=slurm"]).hydra.launcher
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min, launcher.cpus_per_task) == (
        "a100",
        4,
        90,
        8,
    )
    # The command line still wins over the environment.
    assert compose_hydra(["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=1"]).hydra.launcher.gpus_per_node == 1
