"""emotrain-summarize on synthetic sweep directories (no training): statistics, ranking, missing jobs, errors."""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from emotrain.summarize import SUMMARY_FILES, summarize
from emotrain.summarize import main as summarize_main

BASIC = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def make_job(
    sweep: Path,
    name: str,
    num: int,
    overrides: list[str],
    *,
    cv: dict | None = None,
    val_loss: list[float] | None = None,
    val_f1: list[float] | None = None,
    test_loss: float = 1.0,
    failed: str | None = None,
    metrics: bool = True,
) -> Path:
    """A job directory as Hydra + emotrain leave it: .hydra/{overrides,config,hydra}.yaml and metrics.json or
    status.json."""
    d = sweep / name
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (d / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"cv": cv or {"kind": "holdout", "k": 5, "fold": 0}, "seed": 42})
    )
    (d / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if failed is not None:
        (d / "status.json").write_text(json.dumps({"status": "failed", "error": failed, "overrides": overrides}))
    elif metrics:
        val_loss = val_loss or [1.0]
        val_f1 = val_f1 or [0.5] * len(val_loss)
        history = [
            {"epoch": i + 1, "val": {"loss": line, "macro_f1": f}} for i, (line, f) in enumerate(zip(val_loss, val_f1))
        ]
        best = min(range(len(val_loss)), key=lambda i: val_loss[i])
        (d / "metrics.json").write_text(
            json.dumps(
                {
                    "status": "completed",
                    "objective": {"metric": "loss", "mode": "min", "split": "val", "value": val_loss[best]},
                    "best_epoch": best + 1,
                    "best_val": history[best]["val"],
                    "final_val": history[-1]["val"],
                    "test": {"loss": test_loss, "macro_f1": 0.4},
                    "history": history,
                    "overrides": overrides,
                }
            )
        )
    return d


def write_multirun(sweep: Path, task: list[str], params: dict | None = None, cv_k: int = 3) -> None:
    (sweep / "multirun.yaml").write_text(
        yaml.safe_dump(
            {
                "hydra": {
                    "sweeper": {"_target_": BASIC, "max_batch_size": None, "params": params or {}},
                    "overrides": {"task": task},
                },
                "cv": {"kind": "kfold", "k": cv_k, "fold": 0},
            }
        )
    )


def kfold_sweep(tmp_path: Path, losses: dict[int, list[float]], k: int = 3, fail: dict[int, str] | None = None) -> Path:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    write_multirun(sweep, ["sweep=kfold", f"cv.k={k}"], {"cv.fold": "range(${cv.k})"}, cv_k=k)
    for fold in range(k):
        overrides = [f"cv.fold={fold}", "sweep=kfold", f"cv.k={k}"]
        cv = {"kind": "kfold", "k": k, "fold": fold, "seed": 42, "stratified": True, "include_val": False}
        if fail and fold in fail:
            make_job(sweep, f"{fold}_fold{fold}", fold, overrides, cv=cv, failed=fail[fold])
        elif fold in losses:
            make_job(
                sweep,
                f"{fold}_fold{fold}",
                fold,
                overrides,
                cv=cv,
                val_loss=losses[fold],
                val_f1=[0.1 * (fold + 1) + 0.01 * i for i in range(len(losses[fold]))],
                test_loss=2.0 + fold,
            )
    return sweep


def value_after(text: str, label: str) -> tuple[float, float]:
    m = re.search(re.escape(label) + r":\s+([-\d.]+) ± ([-\d.]+|n/a)", text)
    assert m, f"{label!r} not in output:\n{text}"
    return float(m.group(1)), (float("nan") if m.group(2) == "n/a" else float(m.group(2)))


# --------------------------------------------------------------------------- k-fold


def test_kfold_report_statistics_and_files(tmp_path, capsys):
    losses = {0: [0.9, 0.7, 0.8], 1: [0.6, 0.65], 2: [1.1, 0.95, 0.97]}
    sweep = kfold_sweep(tmp_path, losses)
    assert summarize_main([str(sweep), "--metric", "macro_f1"]) == 0
    out = capsys.readouterr().out
    assert "K-FOLD CROSS-VALIDATION RESULTS" in out and "Folds: 3 of k=3 completed" in out
    best = [min(v) for v in losses.values()]
    final = [v[-1] for v in losses.values()]
    mean, std = value_after(out, "Mean best validation loss")
    assert mean == pytest.approx(statistics.mean(best), abs=1e-6) and std == pytest.approx(
        statistics.stdev(best), abs=1e-6
    )
    mean, std = value_after(out, "Mean final validation loss")
    assert mean == pytest.approx(statistics.mean(final), abs=1e-6) and std == pytest.approx(
        statistics.stdev(final), abs=1e-6
    )
    assert "Min / max best validation loss: 0.600000 / 0.950000" in out
    assert "Best fold: 1 (best validation loss 0.600000, job 1_fold1)" in out
    kept = {f: losses[f].index(min(losses[f])) for f in range(3)}  # the epoch each fold kept (by val loss)
    f1_best = [0.1 * (f + 1) + 0.01 * kept[f] for f in range(3)]
    mean, std = value_after(out, "Mean best validation macro_f1")
    assert mean == pytest.approx(statistics.mean(f1_best), abs=1e-6) and std == pytest.approx(
        statistics.stdev(f1_best), abs=1e-6
    )
    assert "Best fold: 2 (best validation macro_f1" in out
    mean, _ = value_after(out, "Mean test loss")
    assert mean == pytest.approx(3.0)

    assert sorted(p.name for p in sweep.glob("summary.*")) == [
        "summary.csv",
        "summary.html",
        "summary.json",
        "summary.png",
    ]
    assert not list(sweep.glob("kfold_results_*"))  # timestamped copies only with --keep-history
    json_files, csv_files = [sweep / "summary.json"], [sweep / "summary.csv"]
    data = json.loads(json_files[0].read_text())
    assert data["complete"] is True and data["k"] == 3 and data["completed_folds"] == [0, 1, 2]
    assert data["summary"]["loss"]["best_val"]["mean"] == pytest.approx(statistics.mean(best))
    assert data["summary"]["loss"]["best_val"]["std"] == pytest.approx(statistics.stdev(best))
    assert data["summary"]["loss"]["final_val"]["mean"] == pytest.approx(statistics.mean(final))
    assert data["summary"]["loss"]["best_fold"]["fold"] == 1
    rows = list(csv.DictReader(csv_files[0].open()))
    assert [int(r["fold"]) for r in rows] == [0, 1, 2]
    assert [float(r["best_val_loss"]) for r in rows] == pytest.approx(best)


def test_kfold_failed_and_missing_folds_are_named_and_excluded(tmp_path, capsys):
    # fold 1 failed (status.json), fold 3 never started (no directory), of k=4 asked for.
    sweep = kfold_sweep(tmp_path, {0: [0.5], 2: [0.7]}, k=4, fail={1: "DataError: train.csv not found"})
    code = summarize_main([str(sweep), "--no-write"])
    out = capsys.readouterr().out
    assert code == 1
    assert "Folds: 2 of k=4 completed" in out
    assert "WARNING: statistics below cover 2 of 4 folds; folds without results: 1, 3" in out
    assert "1_fold1: failed (DataError: train.csv not found)" in out
    assert re.search(r"job 3: missing \(not started: no job directory\)\s+\[cv\.fold=3\]", out)
    mean, std = value_after(out, "Mean best validation loss")
    assert mean == pytest.approx(0.6) and std == pytest.approx(statistics.stdev([0.5, 0.7]), abs=1e-6)
    assert "(n=2)" in out
    assert not list(sweep.glob("kfold_results_*")) and not list(sweep.glob("summary.*"))  # --no-write


def test_job_without_results_or_status_is_missing(tmp_path):
    sweep = kfold_sweep(tmp_path, {0: [0.5], 1: [0.6]}, k=3)
    make_job(
        sweep,
        "2_fold2",
        2,
        ["cv.fold=2", "sweep=kfold", "cv.k=3"],
        cv={"kind": "kfold", "k": 3, "fold": 2},
        metrics=False,
    )
    s = summarize(sweep, write=False)
    assert not s.complete and s.exit_code == 1
    assert s.data["missing"][0]["job"] == "2_fold2" and "no metrics.json" in s.data["missing"][0]["reason"]


# --------------------------------------------------------------------------- grids


def grid_sweep(tmp_path: Path, folds: int = 0) -> tuple[Path, dict]:
    """2 x 2 grid over optim.lr x trainer.dropout, optionally x cv.fold; returns {(lr, dropout): [best losses]}."""
    sweep = tmp_path / "grid"
    sweep.mkdir()
    expected: dict = {}
    num = 0
    base = {("1e-4", "0.0"): 0.50, ("1e-4", "0.2"): 0.40, ("1e-3", "0.0"): 0.70, ("1e-3", "0.2"): 0.30}
    for (lr, dr), loss in base.items():
        for fold in range(max(folds, 1)):
            overrides = [f"optim.lr={lr}", f"trainer.dropout={dr}", "backbone=tiny"]
            cv = {"kind": "holdout", "k": 5, "fold": 0}
            if folds:
                overrides.insert(0, f"cv.fold={fold}")
                overrides.append(f"cv.k={folds}")
                cv = {"kind": "kfold", "k": folds, "fold": fold}
            value = loss + 0.01 * fold * (1 if lr == "1e-4" else 2)
            make_job(sweep, str(num), num, overrides, cv=cv, val_loss=[value + 0.1, value])
            expected.setdefault((lr, dr), []).append(value)
            num += 1
    return sweep, expected


def parse_table(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["rank"])
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("="):
            break
        rows.append(line.split())
    return [lines[start].split()] + rows


def test_grid_groups_ranked_best_first(tmp_path, capsys):
    sweep, expected = grid_sweep(tmp_path)
    assert summarize_main([str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "SWEEP RESULTS" in out and "4 groups" in out
    table = parse_table(out)
    header, rows = table[0], table[1:]
    assert header[:3] == ["rank", "optim.lr", "trainer.dropout"] and "ci95_low" in header
    order = [(r[1], r[2]) for r in rows]
    assert order == sorted(expected, key=lambda g: expected[g][0])
    assert [r[0] for r in rows] == ["1", "2", "3", "4"]
    # higher is better: the order reverses
    assert summarize_main([str(sweep), "--mode", "max", "--no-write"]) == 0
    rows = parse_table(capsys.readouterr().out)[1:]
    assert [(r[1], r[2]) for r in rows] == sorted(expected, key=lambda g: -expected[g][0])
    data = json.loads((sweep / "summary.json").read_text())
    assert [g["overrides"]["optim.lr"] for g in data["groups"]] == [g[0] for g in order]
    assert (
        (sweep / "summary.csv").is_file()
        and (sweep / "summary.png").is_file()
        and not list(sweep.glob("sweep_results_*"))
    )


def test_grid_with_folds_pools_folds_with_t_interval(tmp_path):
    from scipy import stats

    sweep, expected = grid_sweep(tmp_path, folds=3)
    s = summarize(sweep, write=False)
    assert s.kind == "sweep" and s.complete and len(s.data["groups"]) == 4
    for g in s.data["groups"]:
        values = expected[(g["overrides"]["optim.lr"], g["overrides"]["trainer.dropout"])]
        mean, sd = statistics.mean(values), statistics.stdev(values)
        half = stats.t.ppf(0.975, len(values) - 1) * sd / math.sqrt(len(values))
        assert g["n"] == 3 and g["of"] == 3
        assert g["mean"] == pytest.approx(mean) and g["std"] == pytest.approx(sd)
        assert (g["ci95_low"], g["ci95_high"]) == pytest.approx((mean - half, mean + half))
        assert "cv.fold" not in g["overrides"]
    means = [g["mean"] for g in s.data["groups"]]
    assert means == sorted(means)


def test_grid_failed_job_listed_and_group_counts_fewer(tmp_path, capsys):
    sweep, _ = grid_sweep(tmp_path, folds=2)
    # job 3 = (1e-4, 0.2) fold 1: replace its results with a failure
    (sweep / "3" / "metrics.json").unlink()
    (sweep / "3" / "status.json").write_text(
        json.dumps({"status": "failed", "error": "ConfigError: trainer.dropout=2: must be in [0, 1)"})
    )
    assert summarize_main([str(sweep), "--no-write"]) == 1
    out = capsys.readouterr().out
    assert "3: failed (ConfigError: trainer.dropout=2: must be in [0, 1))" in out
    assert "folds without results: 1" in out
    rows = {(r[1], r[2]): r for r in parse_table(out)[1:]}
    assert rows[("1e-4", "0.2")][3:5] == ["1", "2"]  # n of


def test_aggregate_pools_an_extra_key(tmp_path):
    sweep = tmp_path / "seeds"
    for i, (seed, lr, loss) in enumerate([(1, "1e-4", 0.5), (2, "1e-4", 0.7), (1, "1e-3", 0.4), (2, "1e-3", 0.45)]):
        make_job(sweep, str(i), i, [f"seed={seed}", f"optim.lr={lr}"], val_loss=[loss])
    assert len(summarize(sweep, write=False).data["groups"]) == 4
    s = summarize(sweep, aggregate=["seed"], write=False)
    groups = {g["overrides"]["optim.lr"]: g for g in s.data["groups"]}
    assert groups["1e-3"]["rank"] == 1 and groups["1e-3"]["n"] == 2
    assert groups["1e-4"]["mean"] == pytest.approx(0.6)


def test_values_are_the_kept_epochs_not_the_best_over_epochs(tmp_path, capsys):
    """Kept by val loss at epoch 3 while macro_f1 peaked at epoch 2: the summary reports epoch 3's macro_f1 (the
    model the run kept, as its metrics.json's best_val), never epoch 2's."""
    sweep = tmp_path / "kept"
    make_job(sweep, "0", 0, ["optim.lr=1e-3"], val_loss=[0.9, 0.8, 0.7], val_f1=[0.10, 0.30, 0.20])
    make_job(sweep, "1", 1, ["optim.lr=1e-4"], val_loss=[0.9, 0.6, 0.8], val_f1=[0.10, 0.25, 0.40])
    assert summarize_main([str(sweep), "--metric", "macro_f1"]) == 0
    out = capsys.readouterr().out
    assert "at each job's kept evaluation" in out
    data = json.loads((sweep / "summary.json").read_text())
    means = {g["overrides"]["optim.lr"]: g["mean"] for g in data["groups"]}
    assert means == {"1e-3": pytest.approx(0.20), "1e-4": pytest.approx(0.25)}  # best over epochs: 0.30 / 0.40
    assert [g["overrides"]["optim.lr"] for g in data["groups"]] == ["1e-4", "1e-3"]
    assert "value" not in data["objective"]  # one job's objective value is not the sweep's
    # k-fold: the per-fold 'best' column and its statistics are the kept epoch's too
    kf = tmp_path / "kf"
    kf.mkdir()
    write_multirun(kf, ["sweep=kfold", "cv.k=2"], {"cv.fold": "range(${cv.k})"}, cv_k=2)
    for fold, (losses, f1s) in enumerate([([0.9, 0.7], [0.5, 0.3]), ([0.8, 0.6], [0.6, 0.4])]):
        cv = {"kind": "kfold", "k": 2, "fold": fold, "seed": 42, "stratified": True, "include_val": False}
        overrides = [f"cv.fold={fold}", "sweep=kfold", "cv.k=2"]
        make_job(kf, f"{fold}_fold{fold}", fold, overrides, cv=cv, val_loss=losses, val_f1=f1s)
    s = summarize(kf, metrics=["macro_f1"])
    assert s.kind == "kfold"
    assert [f["best_val_macro_f1"] for f in s.data["folds"]] == pytest.approx([0.3, 0.4])
    assert s.data["summary"]["macro_f1"]["best_val"]["mean"] == pytest.approx(0.35)
    page = (kf / "summary.html").read_text()
    assert "Over folds" in page and "0.350000 ± 0.070711" in page  # mean ± sample std in a table, not only the text


# --------------------------------------------------------------------------- errors and CLI


def test_usage_errors_are_one_line_exit_2(tmp_path, capsys):
    assert summarize_main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "emotrain-summarize: error:" in err and "no such directory" in err
    (tmp_path / "empty").mkdir()
    assert summarize_main([str(tmp_path / "empty")]) == 2
    assert "no jobs found" in capsys.readouterr().err
    sweep = kfold_sweep(tmp_path, {0: [0.5], 1: [0.6], 2: [0.7]})
    assert summarize_main([str(sweep), "--metric", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--metric nope" in err and "macro_f1" in err


def test_module_cli(tmp_path):
    sweep = kfold_sweep(tmp_path, {0: [0.5], 1: [0.6], 2: [0.7]})
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain.summarize", str(sweep), "--no-write"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (
        "K-FOLD CROSS-VALIDATION RESULTS" in proc.stdout
        and "Mean best validation loss:  0.600000 ± 0.100000" in proc.stdout
    )
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain.summarize", str(tmp_path / "missing")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- the Hydra callback


def test_callback_summarises_at_multirun_end(tmp_path, capsys):
    from omegaconf import OmegaConf

    from emotrain.callbacks import SweepCallback

    sweep = kfold_sweep(tmp_path, {0: [0.5], 1: [0.6], 2: [0.7]})
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}, "sweeper": {"_target_": "other.Sweeper"}}})
    cb = SweepCallback(enabled=True, metrics=["macro_f1"])
    cb.on_multirun_start(cfg)
    cb.on_multirun_end(cfg)
    out = capsys.readouterr().out
    assert "K-FOLD CROSS-VALIDATION RESULTS" in out and "Mean best validation macro_f1" in out
    assert (sweep / "summary.json").is_file() and (sweep / "summary.html").is_file()
    SweepCallback(enabled=False).on_multirun_end(cfg)
    assert capsys.readouterr().out == ""
    # a sweep dir without jobs: one line, no exception
    empty = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "none")}}})
    SweepCallback().on_multirun_end(empty)
    assert "no such directory" in capsys.readouterr().out


@pytest.mark.parametrize(
    "task,problem",
    [
        (["cv=kfold", "cv.k=3", "cv.fold=range(5)"], "cv.fold=3, 4 (jobs 3, 4) are outside 0..2 for cv.k=3"),
        (["cv=kfold", "cv.k=1", "cv.fold=0"], "cv.k=1 (job 0): k-fold needs k >= 2"),
        (["cv=kfold", "cv.k=2,4", "cv.fold=3"], "cv.fold=3 (job 0) is outside 0..1 for cv.k=2"),
        (["cv=kfold", "cv.k=3", "cv.fold=0,1,2"], None),
        (["cv.fold=9"], None),  # holdout ignores cv.fold
    ],
)
def test_fold_sweep_checked_before_any_job(task, problem):
    from omegaconf import OmegaConf

    from emotrain.callbacks import SweepConfigError, check_fold_sweep

    kfold = "cv=kfold" in task
    k = next((int(t.split("=")[1]) for t in task if t.startswith("cv.k=") and "," not in t), 5)
    cfg = OmegaConf.create(
        {
            "cv": {"kind": "kfold" if kfold else "holdout", "k": k, "fold": 0},
            "hydra": {"sweeper": {"_target_": BASIC, "params": {}}, "overrides": {"task": task}},
        }
    )
    if problem is None:
        check_fold_sweep(cfg)
        return
    with pytest.raises(SweepConfigError) as e:
        check_fold_sweep(cfg)
    assert problem in str(e.value) and "no job was started" in str(e.value) and "\n" not in str(e.value)


def test_optuna_direction_resolver():
    from omegaconf import OmegaConf

    import emotrain.callbacks  # noqa: F401
    from emotrain.config import MonitorMode

    cfg = OmegaConf.create({"mode": "max", "d": "${emotrain.optuna_direction:${mode}}"})
    assert cfg.d == "maximize"
    cfg = OmegaConf.create({"d": "${emotrain.optuna_direction:x}", "e": MonitorMode.min})
    assert emotrain.callbacks._optuna_direction(cfg.e) == "minimize"
    from omegaconf.errors import InterpolationResolutionError

    with pytest.raises(InterpolationResolutionError, match="trainer.monitor_mode=x: use min or max"):
        _ = cfg.d


def test_summary_files_keep_stable_names_and_history_is_opt_in(tmp_path, capsys):
    """Every call replaces summary.json/.csv/.png/.html (no pile-up); --keep-history adds timestamped copies."""
    sweep = kfold_sweep(tmp_path, {0: [0.9, 0.7], 1: [0.8, 0.6], 2: [0.95, 0.85]}, k=3)
    for _ in range(3):
        assert summarize_main([str(sweep)]) == 0
    names = sorted(p.name for p in sweep.iterdir() if p.is_file())
    assert set(names) >= set(SUMMARY_FILES) and len([n for n in names if n.startswith("summary.")]) == 4
    assert not [n for n in names if n.startswith(("kfold_results_", "."))]  # no timestamped copies, no temp files
    assert summarize_main([str(sweep), "--keep-history"]) == 0
    stamped = sorted(p.name for p in sweep.glob("kfold_results_*"))
    assert len(stamped) == 2 and re.fullmatch(r"kfold_results_\d{8}_\d{6}\.json", stamped[1])


def test_summary_plot_and_html_show_the_folds(tmp_path):
    from html.parser import HTMLParser

    import matplotlib.image as mpimg

    sweep = kfold_sweep(tmp_path, {0: [0.9, 0.7], 1: [0.8, 0.6], 2: [0.95, 0.85]}, k=3)
    s = summarize(sweep)
    img = mpimg.imread(sweep / "summary.png")
    assert img.shape[0] > 200 and img[..., :3].std() > 0.05
    page = (sweep / "summary.html").read_text()

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.cells, self.in_cell, self.srcs = [], False, []

        def handle_starttag(self, tag, attrs):
            self.in_cell = tag in ("td", "th")
            if tag == "img":
                self.srcs.append(dict(attrs)["src"])

        def handle_data(self, data):
            if self.in_cell and data.strip():
                self.cells.append(data.strip())

    parser = Cells()
    parser.feed(page)
    assert parser.srcs and all(src.startswith("data:image/png;base64,") for src in parser.srcs)  # self-contained
    assert "http://" not in page and "https://" not in page
    assert "best_val_loss" in parser.cells and "0.7000" in parser.cells and "0.6000" in parser.cells  # per-fold values
    assert "Folds: 3 of k=3 completed" in page and s.complete
