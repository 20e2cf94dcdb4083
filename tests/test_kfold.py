"""K-fold cross-validation as a real Hydra multirun, launched as a user would, on the tiny backbone."""

from __future__ import annotations

import json
import re
import statistics

import numpy as np
import pytest

from conftest import REPO_ROOT, compose, quick, run_emotrain

K = 3
# ~1-2 s per job: tiny random BERT, 48 training rows (3 folds of 16), one epoch.
DATA = ["data.max_train_examples=48", "data.max_eval_examples=32"]
QUICK = quick("data.max_train_examples=48", max_eval=32)
# Stated tolerance: StratifiedKFold puts floor(c/k) or ceil(c/k) of each class's c rows in every
# fold, so a class's share in a held-out fold is within one row (1/|fold|) of its share in the pool.
ROW_TOLERANCE = 1.0


@pytest.fixture(scope="module")
def kfold_sweep(tmp_path_factory):
    """`python -m emotrain sweep=kfold cv.k=3 ...`: every fold, one multirun, summary at the end."""
    cwd = tmp_path_factory.mktemp("kfold")
    sweep = cwd / "sweep"
    proc = run_emotrain(["sweep=kfold", f"cv.k={K}", *QUICK, f"hydra.sweep.dir={sweep}"], cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return sweep, proc


def pool_and_task():
    """The k-fold pool the jobs fold over: the capped training split (cv.include_val=false)."""
    from emotrain.data.loading import load_data

    cfg = compose(["cv=kfold", *DATA])
    bundle = load_data(cfg.data, REPO_ROOT)
    return bundle, bundle.task(bundle.primary_task)


def test_sweep_kfold_runs_every_fold_into_named_dirs(kfold_sweep):
    sweep, proc = kfold_sweep
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == [f"{i}_fold{i}" for i in range(K)]  # job number and fold in the name
    for i, name in enumerate(jobs):
        metrics = json.loads((sweep / name / "metrics.json").read_text())
        assert metrics["status"] == "completed"
        assert metrics["config"]["cv"] == {
            "kind": "kfold",
            "k": K,
            "fold": i,
            "seed": 42,
            "stratified": True,
            "include_val": False,
        }
        assert f"cv.fold={i}" in (sweep / name / ".hydra" / "overrides.yaml").read_text()
    # the end-of-sweep callback printed the summary and wrote its files
    assert "K-FOLD CROSS-VALIDATION RESULTS" in proc.stdout and f"Folds: {K} of k={K} completed" in proc.stdout
    assert all((sweep / name).is_file() for name in ("summary.json", "summary.csv", "summary.png", "summary.html"))


def test_folds_partition_the_pool_stratified_and_test_untouched(kfold_sweep):
    from emotrain.data.splitting import kfold_indices

    sweep, _ = kfold_sweep
    bundle, task = pool_and_task()
    pool, y = bundle.train, bundle.train.targets[task.name]
    held = []
    for fold in range(K):
        train_idx, val_idx = kfold_indices(pool, task, K, fold, seed=42, stratified=True)
        metrics = json.loads((sweep / f"{fold}_fold{fold}" / "metrics.json").read_text())
        assert metrics["data_sizes"] == {"train": len(train_idx), "val": len(val_idx), "test": len(bundle.test)}
        record = sweep / f"{fold}_fold{fold}" / "cv_split.json"
        if record.exists():  # written by the recipe: the job's own held-out rows
            split = json.loads(record.read_text())
            assert split["pool_size"] == len(pool) and split["val_indices"] == val_idx.tolist()
        assert len(np.intersect1d(train_idx, val_idx)) == 0 and len(train_idx) + len(val_idx) == len(pool)
        # stratified: every class's share of the held-out fold is within one row of its pool share
        pool_share = np.bincount(y, minlength=task.num_labels) / len(pool)
        fold_share = np.bincount(y[val_idx], minlength=task.num_labels) / len(val_idx)
        assert np.all(np.abs(fold_share - pool_share) <= ROW_TOLERANCE / len(val_idx) + 1e-9), (fold_share, pool_share)
        # every fold reports test metrics on the same, untouched test split
        assert metrics["test"]["loss"] > 0 and "macro_f1" in metrics["test"]
        held.append(val_idx)
    all_held = np.concatenate(held)
    assert len(all_held) == len(np.unique(all_held)) == len(pool)  # disjoint and covering the pool
    assert np.array_equal(np.sort(all_held), np.arange(len(pool)))


def test_summarize_matches_statistics_from_the_json_files(kfold_sweep, capsys):
    from emotrain.summarize import main as summarize_main

    sweep, _ = kfold_sweep
    metrics = [json.loads((sweep / f"{f}_fold{f}" / "metrics.json").read_text()) for f in range(K)]
    best = [min(h["val"]["loss"] for h in m["history"]) for m in metrics]
    final = [m["final_val"]["loss"] for m in metrics]
    f1 = [max(h["val"]["emotion/macro_f1"] for h in m["history"]) for m in metrics]

    assert summarize_main([str(sweep), "--metric", "emotion/macro_f1"]) == 0
    out = capsys.readouterr().out

    def mean_std(label):
        m = re.search(re.escape(label) + r":\s+([-\d.]+) ± ([-\d.]+)", out)
        assert m, out
        return float(m.group(1)), float(m.group(2))

    assert "K-FOLD CROSS-VALIDATION RESULTS" in out
    assert mean_std("Mean best validation loss") == pytest.approx(
        (statistics.mean(best), statistics.stdev(best)), abs=1e-6
    )
    assert mean_std("Mean final validation loss") == pytest.approx(
        (statistics.mean(final), statistics.stdev(final)), abs=1e-6
    )
    assert mean_std("Mean best validation emotion/macro_f1") == pytest.approx(
        (statistics.mean(f1), statistics.stdev(f1)), abs=1e-6
    )
    assert f"Min / max best validation loss: {min(best):.6f} / {max(best):.6f}" in out
    assert f"Best fold: {int(np.argmin(best))} (best validation loss {min(best):.6f}" in out
    for fold in range(K):  # the per-fold table lists every fold's best validation loss
        assert re.search(rf"^\s*{fold}\s+{fold}_fold{fold}\s+\d+\s+{best[fold]:.6f}", out, re.M)
    data = json.loads((sweep / "summary.json").read_text())
    assert data["summary"]["loss"]["best_val"]["mean"] == pytest.approx(statistics.mean(best))
    assert data["summary"]["loss"]["best_val"]["std"] == pytest.approx(statistics.stdev(best))


def test_cv_errors_are_one_line_before_training(tmp_path):
    from conftest import train
    from emotrain.errors import ConfigError, DataError

    # CLI: fold outside [0, k): exit 2, one line on stderr, no traceback, nothing trained
    proc = run_emotrain(["cv=kfold", "cv.k=3", "cv.fold=3", *QUICK, f"hydra.run.dir={tmp_path}/run"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "emotrain: error: cv.fold=3: must be in [0, 3) for cv.k=3"
    assert "Traceback" not in proc.stderr and not (tmp_path / "run" / "metrics.json").exists()
    # a multirun over folds outside [0, k) stops before its first job
    proc = run_emotrain(
        ["-m", "cv=kfold", "cv.k=3", "cv.fold=range(5)", *QUICK, f"hydra.sweep.dir={tmp_path}/sweep"], tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == (
        "emotrain: error: cv.fold=3, 4 (jobs 3, 4) are outside 0..2 for cv.k=3; "
        "sweep 'cv.fold=range(${cv.k})' or use sweep=kfold (no job was started)"
    )
    assert not (tmp_path / "sweep").exists()
    # k < 2, and a class smaller than k under stratification (no fallback: the message names the fixes)
    with pytest.raises(ConfigError) as e:
        train(["cv=kfold", "cv.k=1", *QUICK], tmp_path)
    assert str(e.value) == "cv.k=1: k-fold needs k >= 2"
    with pytest.raises(DataError) as e:
        train(["cv=kfold", "cv.k=6", "cv.fold=0", *QUICK], tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "only 4 examples" in msg and "lower cv.k, set cv.stratified=false" in msg
    assert not (tmp_path / "run" / "metrics.json").exists()
