"""Summarise a Hydra multirun: k-fold cross-validation results, or a ranked table of a sweep.

    python -m emotrain.summarize SWEEP_DIR [--metric NAME ...] [--mode min|max] [--aggregate KEY ...]
    emotrain-summarize SWEEP_DIR ...

Reads every job directory under SWEEP_DIR (its metrics.json, .hydra/overrides.yaml,
.hydra/config.yaml and, for failed jobs, status.json) and the sweep's multirun.yaml (to
know which jobs were asked for).

- A k-fold sweep (every job cv=kfold and nothing but cv.fold varies) prints
  ``K-FOLD CROSS-VALIDATION RESULTS``: per fold the best and final validation loss and the
  test loss; the mean best / mean final validation loss +- std, min, max and the best
  fold; the same for each --metric.
- Any other multirun (a grid, with or without folds, an Optuna study) groups the jobs by
  their overrides minus cv.fold (and minus --aggregate keys), and prints a table ranked
  best first: per group n, mean, std and a 95% confidence interval (t distribution) of the
  first --metric.

Either way it writes summary.json, summary.csv, summary.png (per-fold bars with the mean +- std,
or the ranked groups with their confidence intervals) and summary.html (one self-contained
page) into SWEEP_DIR, replacing the previous ones atomically; --keep-history also keeps
timestamped copies (kfold_results_<YYYYMMDD_HHMMSS>.json/.csv, sweep_results_...).

"best" is the best value of a metric over a job's validation evaluations (min for
losses, max otherwise; --mode overrides); "final" the last evaluation's; "test" the test
split's, evaluated with the weights of the epoch trainer.monitor selected.
Standard deviations are sample standard deviations (ddof=1).

Failed, interrupted and missing jobs are listed by name with the reason and left out of
every statistic; folds missing from a k-fold group are named. Exit status: 0 when every
job asked for completed, 1 when some did not (the summary covers the rest), 2 on a usage
error (no such directory, no jobs, unknown metric).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from emotrain.io import atomic_write, json_safe, write_json

log = logging.getLogger(__name__)

FOLD_KEY = "cv.fold"
EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2
NUM = "{:.6f}"


class SummaryError(Exception):
    """A usage error: printed as one line, exit status 2."""


# --------------------------------------------------------------------------- jobs


@dataclass
class Job:
    name: str  # the job directory relative to the sweep dir, or "job N" when it has none
    path: Path | None
    num: int | None  # hydra.job.num
    overrides: list[str]
    status: str  # completed | failed | interrupted | missing
    reason: str = ""
    metrics: dict | None = None  # metrics.json
    cv: dict = field(default_factory=dict)  # the job's cv config (kind, k, fold, seed, stratified, include_val)

    @property
    def ok(self) -> bool:
        return self.status == "completed" and self.metrics is not None

    @property
    def fold(self) -> int | None:
        value = override_dict(self.overrides).get(FOLD_KEY, self.cv.get("fold"))
        try:
            return int(value)
        except (TypeError, ValueError):
            return None

    def group_key(self, aggregate: Iterable[str] = ()) -> tuple[str, ...]:
        drop = {FOLD_KEY, *aggregate}
        return tuple(sorted(o for o in self.overrides if override_key(o) not in drop))

    def describe(self) -> str:
        what = f"{self.name}: {self.status}"
        return f"{what} ({self.reason})" if self.reason else what


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def override_dict(overrides: Iterable[str]) -> dict[str, str]:
    out = {}
    for o in overrides:
        key, _, value = o.partition("=")
        out[key.lstrip("+~")] = value
    return out


def _read_json(path: Path) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except (FileNotFoundError, yaml.YAMLError):
        return None


def _job_dirs(sweep_dir: Path) -> list[Path]:
    """Directories under the sweep dir that hold a job: a .hydra/overrides.yaml, metrics.json or status.json."""
    found: set[Path] = set()
    for p in sweep_dir.rglob("overrides.yaml"):
        if p.parent.name == ".hydra":
            found.add(p.parent.parent)
    for name in ("metrics.json", "status.json"):
        found.update(p.parent for p in sweep_dir.rglob(name))
    found.discard(sweep_dir)
    # Only the outermost: a job's own subfolders (report/, model/, .submitit/) are not jobs.
    dirs = [d for d in found if not any(parent in found for parent in d.parents)]
    return sorted(dirs, key=_natural_key)


def _natural_key(path: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def load_job(path: Path, sweep_dir: Path) -> Job:
    name = str(path.relative_to(sweep_dir))
    hydra_cfg = _read_yaml(path / ".hydra" / "hydra.yaml") or {}
    num = (hydra_cfg.get("hydra") or {}).get("job", {}).get("num") if isinstance(hydra_cfg, dict) else None
    if num is None:
        match = re.match(r"(\d+)", path.name)
        num = int(match.group(1)) if match else None
    overrides = _read_yaml(path / ".hydra" / "overrides.yaml")
    job_cfg = _read_yaml(path / ".hydra" / "config.yaml")
    cv = dict(job_cfg.get("cv") or {}) if isinstance(job_cfg, dict) else {}

    metrics, reason, status = None, "", "missing"
    metrics_path, status_path = path / "metrics.json", path / "status.json"
    try:
        metrics = _read_json(metrics_path)
    except (OSError, ValueError) as e:
        status, reason = "failed", f"unreadable metrics.json: {e}"
    status_info = None
    try:
        status_info = _read_json(status_path)
    except (OSError, ValueError) as e:
        status, reason = "failed", f"unreadable status.json: {e}"
    # A status file newer than metrics.json (a later attempt in the same directory failed) wins.
    status_newer = status_info is not None and (metrics is None or status_path.stat().st_mtime >= metrics_path.stat().st_mtime)
    if status_newer and status_info.get("status") != "completed":
        status = str(status_info.get("status") or "failed")
        reason = str(status_info.get("error") or ("interrupted" if status == "interrupted" else "no error recorded"))
        metrics = None
    elif metrics is not None:
        status = str(metrics.get("status") or "completed")
        if status != "completed":
            reason = f"metrics.json says status={status}"
            metrics = None
    elif not reason:
        reason = "no metrics.json or status.json: still running, killed, or crashed before writing them"
    if overrides is None:
        overrides = (metrics or status_info or {}).get("overrides") or []
    if not cv and metrics is not None:
        cv = dict((metrics.get("config") or {}).get("cv") or {})
    return Job(name=name, path=path, num=num, overrides=[str(o) for o in overrides], status=status, reason=reason, metrics=metrics, cv=cv)


# --------------------------------------------------------------------------- what the sweep asked for


def expand_basic_sweep(params: dict[str, Any] | None, task_overrides: Sequence[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches for `hydra.sweeper.params` + the command line, in job-number order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args = [f"{k}={v}" for k, v in (params or {}).items()] + [str(o) for o in task_overrides]
    parsed = OverridesParser.create().parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def expected_jobs(sweep_dir: Path) -> tuple[list[list[str]] | None, int | None]:
    """(overrides of every job asked for, or None; number of jobs asked for, or None) from multirun.yaml."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None, None
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        sweeper = cfg.hydra.sweeper
        target = str(sweeper.get("_target_", ""))
        if target.endswith("BasicSweeper"):
            params = {str(k): str(sweeper.params[k]) for k in sweeper.params} if sweeper.get("params") else {}
            jobs = expand_basic_sweep(params, list(cfg.hydra.overrides.task))
            return jobs, len(jobs)
        if "optuna" in target.lower():
            return None, int(sweeper.n_trials)
    except Exception as e:  # an unreadable or unusual multirun.yaml: judge by the job dirs alone
        log.debug("cannot expand %s: %s", path, e)
    return None, None


def collect_jobs(sweep_dir: Path) -> list[Job]:
    """Every job of the sweep: found on disk, plus those asked for that left no directory."""
    jobs = [load_job(d, sweep_dir) for d in _job_dirs(sweep_dir)]
    asked, count = expected_jobs(sweep_dir)
    if count is None:
        return jobs
    nums = {j.num for j in jobs if j.num is not None}
    for i in range(count):
        if i not in nums:
            overrides = asked[i] if asked is not None else []
            jobs.append(Job(name=f"job {i}", path=None, num=i, overrides=overrides, status="missing", reason="not started: no job directory"))
    return sorted(jobs, key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.name))


# --------------------------------------------------------------------------- values and statistics


def infer_mode(metric: str, objective: dict | None = None) -> str:
    if objective and objective.get("metric") == metric and objective.get("mode") in ("min", "max"):
        return str(objective["mode"])
    return "min" if metric.split("/")[-1].endswith("loss") else "max"


def _finite(x: Any) -> float | None:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def job_values(metrics: dict, metric: str, mode: str) -> dict[str, float]:
    """best (over the validation evaluations), final (last evaluation) and test value of `metric`; NaN where absent."""
    history = [_finite((h.get("val") or {}).get(metric)) for h in metrics.get("history") or []]
    history = [v for v in history if v is not None]
    if history:
        best = min(history) if mode == "min" else max(history)
    else:
        best = _finite((metrics.get("best_val") or {}).get(metric))
    final = _finite((metrics.get("final_val") or {}).get(metric))
    test = _finite((metrics.get("test") or {}).get(metric))
    nan = float("nan")
    return {"best": nan if best is None else best, "final": nan if final is None else final, "test": nan if test is None else test}


def describe(values: Sequence[float]) -> dict[str, float]:
    """n, mean, sample std, min, max and the 95% t confidence interval of the finite values."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = int(v.size)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "mean": nan, "std": nan, "min": nan, "max": nan, "ci95_low": nan, "ci95_high": nan}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if n > 1 else nan
    if n > 1:
        from scipy import stats

        half = float(stats.t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        low, high = mean - half, mean + half
    else:
        low = high = nan
    return {"n": n, "mean": mean, "std": std, "min": float(v.min()), "max": float(v.max()), "ci95_low": low, "ci95_high": high}


def _fmt(x: Any) -> str:
    x = _finite(x)
    return "n/a" if x is None else NUM.format(x)


def _short(value: str) -> str:
    """An override value for display: long floats (Optuna's samples) to 4 significant digits."""
    if len(value) > 10 and re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", value) and not value.lstrip("+-").isdigit():
        short = f"{float(value):.4g}"
        return short if len(short) < len(value) else value
    return value


def _pm(stats: dict) -> str:
    return f"{_fmt(stats['mean'])} ± {_fmt(stats['std'])}"


def available_metrics(jobs: Sequence[Job]) -> list[str]:
    keys: dict[str, None] = {}
    for j in jobs:
        if j.ok:
            for h in j.metrics.get("history") or []:
                keys.update(dict.fromkeys((h.get("val") or {}).keys()))
            keys.update(dict.fromkeys((j.metrics.get("best_val") or {}).keys()))
    return list(keys)


# --------------------------------------------------------------------------- the summary


@dataclass
class Summary:
    kind: str  # kfold | sweep
    text: str
    data: dict
    complete: bool
    table: Any = None  # the CSV's rows (a DataFrame)
    files: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.complete else EXIT_INCOMPLETE


def _groups(jobs: Sequence[Job], aggregate: Sequence[str]) -> dict[tuple[str, ...], list[Job]]:
    groups: dict[tuple[str, ...], list[Job]] = {}
    for j in jobs:
        groups.setdefault(j.group_key(aggregate), []).append(j)
    return groups


def _group_kfold(group: Sequence[Job]) -> dict | None:
    """The k-fold setting of a group (kind, k, seed, stratified) when its jobs are k-fold jobs."""
    cvs = [j.cv for j in group if j.cv]
    if not cvs or any(str(cv.get("kind")) != "kfold" for cv in cvs):
        return None
    return cvs[0]


def _missing_folds(group: Sequence[Job], cv: dict) -> list[int]:
    done = {j.fold for j in group if j.ok}
    try:
        k = int(cv.get("k"))
    except (TypeError, ValueError):
        return []
    return [f for f in range(k) if f not in done]


def summarize(
    sweep_dir: str | Path,
    metrics: Sequence[str] | None = None,
    mode: str | None = None,
    aggregate: Sequence[str] = (),
    kind: str = "auto",
    write: bool = True,
) -> Summary:
    """Summarise the multirun in `sweep_dir`; raises SummaryError on usage errors."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise SummaryError(f"{sweep_dir}: no such directory")
    if not sweep_dir.is_dir():
        raise SummaryError(f"{sweep_dir}: not a directory")
    if mode not in (None, "min", "max"):
        raise SummaryError(f"--mode {mode}: use min or max")
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        raise SummaryError(f"{sweep_dir}: no jobs found (no job directory with .hydra/overrides.yaml, metrics.json or status.json); pass a multirun sweep directory")
    done = [j for j in jobs if j.ok]
    objective = next((j.metrics.get("objective") for j in done if j.metrics.get("objective")), None)
    known = available_metrics(jobs)
    for m in metrics or []:
        if done and m not in known:
            raise SummaryError(f"--metric {m}: not in the jobs' metrics; choose from {', '.join(known)}")

    groups = _groups(jobs, aggregate)
    is_kfold = len(groups) == 1 and _group_kfold(next(iter(groups.values()))) is not None
    if kind == "kfold" and not is_kfold:
        raise SummaryError(f"{sweep_dir}: not a k-fold sweep (every job cv=kfold, only cv.fold varying)")
    if kind == "sweep":
        is_kfold = False
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    if is_kfold:
        summary = _kfold_summary(sweep_dir, jobs, metrics, mode, objective, stamp)
    else:
        summary = _sweep_summary(sweep_dir, jobs, groups, metrics, mode, objective, stamp, aggregate)
    if write:
        write_summary(summary, sweep_dir)
    return summary


def _missing_section(jobs: Sequence[Job]) -> tuple[list[str], list[dict]]:
    bad = [j for j in jobs if not j.ok]
    lines, records = [], []
    if bad:
        # Show what tells the job apart: its overrides minus those every job shares.
        shared = set.intersection(*(set(j.overrides) for j in jobs)) if len(jobs) > 1 else set()
        lines.append(f"Missing or failed jobs ({len(bad)}, excluded from every statistic):")
        for j in bad:
            own = " ".join(o for o in j.overrides if o not in shared)
            lines.append(f"  {j.describe()}" + (f"  [{own}]" if own else ""))
            records.append({"job": j.name, "num": j.num, "fold": j.fold, "status": j.status, "reason": j.reason, "overrides": j.overrides})
    return lines, records


def _kfold_summary(sweep_dir: Path, jobs: list[Job], metrics, mode, objective, stamp) -> Summary:
    import pandas as pd

    cv = _group_kfold(jobs) or {}
    k = int(cv.get("k", 0) or 0)
    # Validation loss always; then the --metric list, by default the objective (or macro_f1 when that is the loss).
    default = (objective or {}).get("metric") or "loss"
    extra = list(metrics) if metrics else [default if default != "loss" else "macro_f1"]
    known = available_metrics(jobs)
    chosen = [m for m in dict.fromkeys(["loss", *extra]) if m == "loss" or not known or m in known]
    modes = {m: (mode if mode and m in (metrics or []) else infer_mode(m, objective)) for m in chosen}
    done = sorted((j for j in jobs if j.ok), key=lambda j: (j.fold if j.fold is not None else 1 << 30))
    missing_folds = _missing_folds(jobs, cv)
    complete = not missing_folds and all(j.ok for j in jobs)

    lines = ["=" * 72, "K-FOLD CROSS-VALIDATION RESULTS", "=" * 72, f"Sweep: {sweep_dir}"]
    lines.append(
        f"Folds: {len(done)} of k={k} completed (split seed {cv.get('seed')}, stratified={cv.get('stratified')}, include_val={cv.get('include_val')})"
    )
    if objective:
        lines.append(f"Objective: {objective.get('split', 'val')} {objective.get('metric')} ({objective.get('mode')}); 'best' = best value over a fold's validation evaluations")
    if not complete:
        lines.append(f"WARNING: statistics below cover {len(done)} of {k} folds" + (f"; folds without results: {', '.join(map(str, missing_folds))}" if missing_folds else ""))
    bad_lines, bad_records = _missing_section(jobs)
    lines += bad_lines

    per_fold = []
    for j in jobs:
        row = {"fold": j.fold, "job": j.name, "status": j.status, "best_epoch": (j.metrics or {}).get("best_epoch")}
        for m in chosen:
            vals = job_values(j.metrics, m, modes[m]) if j.ok else {"best": float("nan"), "final": float("nan"), "test": float("nan")}
            row.update({f"best_val_{m}": vals["best"], f"final_val_{m}": vals["final"], f"test_{m}": vals["test"]})
        if not j.ok:
            row["reason"] = j.reason
        per_fold.append(row)
    per_fold.sort(key=lambda r: (r["fold"] is None, r["fold"] if r["fold"] is not None else 0, r["job"]))

    stats: dict[str, dict] = {}
    for m in chosen:
        direction = "lower" if modes[m] == "min" else "higher"
        ok_rows = [r for r in per_fold if r["status"] == "completed"]
        best = describe([r[f"best_val_{m}"] for r in ok_rows])
        final = describe([r[f"final_val_{m}"] for r in ok_rows])
        test = describe([r[f"test_{m}"] for r in ok_rows])
        finite = [r for r in ok_rows if _finite(r[f"best_val_{m}"]) is not None]
        best_row = (min if modes[m] == "min" else max)(finite, key=lambda r: r[f"best_val_{m}"]) if finite else None
        stats[m] = {
            "mode": modes[m],
            "best_val": best,
            "final_val": final,
            "test": test,
            "best_fold": None if best_row is None else {"fold": best_row["fold"], "job": best_row["job"], "value": best_row[f"best_val_{m}"]},
        }
        label = "validation loss" if m == "loss" else f"validation {m}"
        table = pd.DataFrame(
            [
                {"fold": "-" if r["fold"] is None else r["fold"], "job": r["job"], "best_epoch": "-" if r["best_epoch"] is None else r["best_epoch"], f"best_val_{m}": r[f"best_val_{m}"],
                 f"final_val_{m}": r[f"final_val_{m}"], f"test_{m}": r[f"test_{m}"], "status": r["status"]}
                for r in per_fold
            ]
        )
        lines += ["", f"Best {label} per fold ({direction} is better):"]
        lines += ["  " + line for line in table.to_string(index=False, float_format=NUM.format, na_rep="-").splitlines()]
        lines.append(f"Mean best {label}:  {_pm(best)}  (n={best['n']})")
        lines.append(f"Mean final {label}: {_pm(final)}  (n={final['n']})")
        lines.append(f"Min / max best {label}: {_fmt(best['min'])} / {_fmt(best['max'])}")
        if best_row is not None:
            lines.append(f"Best fold: {best_row['fold']} (best {label} {_fmt(best_row[f'best_val_{m}'])}, job {best_row['job']})")
        lines.append(f"Mean test {m}: {_pm(test)}  (n={test['n']})")
    lines.append("=" * 72)

    data = {
        "kind": "kfold",
        "sweep_dir": str(sweep_dir),
        "created": stamp,
        "complete": complete,
        "k": k,
        "cv": cv,
        "completed_folds": [j.fold for j in done],
        "missing_folds": missing_folds,
        "missing": bad_records,
        "objective": objective,
        "metrics": chosen,
        "std": "sample (ddof=1)",
        "folds": per_fold,
        "summary": stats,
    }
    return Summary(kind="kfold", text="\n".join(lines), data=json_safe(data), complete=complete, table=pd.DataFrame(per_fold))


def _sweep_summary(sweep_dir: Path, jobs: list[Job], groups: dict, metrics, mode, objective, stamp, aggregate: Sequence[str] = ()) -> Summary:
    import pandas as pd

    metric = (metrics or [None])[0] or (objective or {}).get("metric") or "loss"
    extra = list(metrics or [])[1:]
    m_mode = mode or infer_mode(metric, objective)
    # Override keys whose values differ between groups become the table's columns.
    dicts = {key: override_dict(key) for key in groups}
    all_keys = list(dict.fromkeys(k for d in dicts.values() for k in d))
    varying = [k for k in all_keys if len({d.get(k) for d in dicts.values()}) > 1]

    rows, missing_folds_total = [], []
    for key, group in groups.items():
        ok = [j for j in group if j.ok]
        vals = [job_values(j.metrics, metric, m_mode) for j in ok]
        s = describe([v["best"] for v in vals])
        test = describe([v["test"] for v in vals])
        cv = _group_kfold(group)
        expected = len(group)
        missing_folds: list[int] = []
        if cv is not None:
            missing_folds = _missing_folds(group, cv)
            expected = max(expected, int(cv.get("k", 0) or 0))
            missing_folds_total += missing_folds
        row = {k: dicts[key].get(k, "-") for k in varying} if varying else {"group": "(all jobs)"}
        row.update({"n": s["n"], "of": expected, "mean": s["mean"], "std": s["std"], "ci95_low": s["ci95_low"], "ci95_high": s["ci95_high"], "test_mean": test["mean"]})
        for m in extra:
            row[f"{m}_mean"] = describe([job_values(j.metrics, m, mode or infer_mode(m, objective))["best"] for j in ok])["mean"]
        row["_jobs"] = [j.name for j in group]
        row["_missing_folds"] = missing_folds
        row["_overrides"] = dicts[key]
        rows.append(row)

    def rank_key(r):
        v = _finite(r["mean"])
        return (v is None, 0.0 if v is None else (v if m_mode == "min" else -v))

    rows.sort(key=rank_key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    complete = all(j.ok for j in jobs) and not missing_folds_total
    table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    table = table[["rank"] + [c for c in table.columns if c != "rank"]]

    direction = "lower" if m_mode == "min" else "higher"
    n_ok = sum(j.ok for j in jobs)
    lines = ["=" * 72, "SWEEP RESULTS", "=" * 72, f"Sweep: {sweep_dir}", f"Jobs: {n_ok} of {len(jobs)} completed, {len(groups)} groups (overrides minus {', '.join([FOLD_KEY, *aggregate])})"]
    lines.append(f"Ranked by mean best validation {metric} ({direction} is better); std: sample (ddof=1); ci95: t distribution")
    bad_lines, bad_records = _missing_section(jobs)
    if not complete:
        lines.append(f"WARNING: {len(jobs) - n_ok} job(s) without results; their groups' statistics cover fewer jobs (see n / of)")
    lines += bad_lines
    for r in rows:
        if r["_missing_folds"]:
            lines.append(f"  group rank {r['rank']}: folds without results: {', '.join(map(str, r['_missing_folds']))}")
    lines.append("")
    shown = table.copy()
    for column in varying:  # Optuna's long float samples, shortened on screen (full values in the CSV/JSON)
        shown[column] = shown[column].map(_short)
    lines += shown.to_string(index=False, float_format=NUM.format, na_rep="-").splitlines()
    lines.append("=" * 72)

    data = {
        "kind": "sweep",
        "sweep_dir": str(sweep_dir),
        "created": stamp,
        "complete": complete,
        "metric": metric,
        "mode": m_mode,
        "objective": objective,
        "std": "sample (ddof=1)",
        "ci": "95% t distribution",
        "varying": varying,
        "groups": [
            {**{k: v for k, v in r.items() if not k.startswith("_")}, "overrides": r["_overrides"], "jobs": r["_jobs"], "missing_folds": r["_missing_folds"]}
            for r in rows
        ],
        "missing": bad_records,
        "jobs": [
            {"job": j.name, "num": j.num, "status": j.status, "fold": j.fold, "overrides": j.overrides,
             "values": job_values(j.metrics, metric, m_mode) if j.ok else None}
            for j in jobs
        ],
    }
    return Summary(kind="sweep", text="\n".join(lines), data=json_safe(data), complete=complete, table=table)


SUMMARY_FILES = ("summary.json", "summary.csv", "summary.png", "summary.html")


def plot_summary(summary: Summary, path: Path) -> Path:
    """k-fold: the best validation value per fold with the mean and a +- std band; a sweep: the groups ranked,
    best on top, each with its 95% confidence interval."""
    from matplotlib.figure import Figure

    from emotrain.reports import _save_figure

    data = summary.data
    if summary.kind == "kfold":
        metric = next((m for m in data["metrics"] if m != "loss"), "loss")
        mode = data["summary"][metric]["mode"]
        folds = [f for f in data["folds"] if f["status"] == "completed" and _finite(f.get(f"best_val_{metric}")) is not None]
        fig = Figure(figsize=(max(6.0, 0.9 * len(folds) + 3), 4.6), layout="constrained")
        ax = fig.add_subplot()
        xs = [str(f["fold"]) for f in folds]
        ax.bar(xs, [f[f"best_val_{metric}"] for f in folds], color="tab:blue", alpha=0.85, label=f"best validation {metric}")
        tests = [(x, f.get(f"test_{metric}")) for x, f in zip(xs, folds) if _finite(f.get(f"test_{metric}")) is not None]
        if tests:
            ax.plot([x for x, _ in tests], [v for _, v in tests], "D", color="tab:orange", label=f"test {metric}")
        stats = data["summary"][metric]["best_val"]
        if _finite(stats.get("mean")) is not None:
            std = _finite(stats.get("std")) or 0.0
            ax.axhline(stats["mean"], color="black", ls="--", lw=1.2, label=f"mean {stats['mean']:.4f} +- {std:.4f} (std)")
            ax.axhspan(stats["mean"] - std, stats["mean"] + std, color="grey", alpha=0.15)
        ax.set_xlabel("fold")
        ax.set_ylabel(metric)
        ax.set_title(f"{len(folds)}-fold cross-validation: best validation {metric} per fold ({'lower' if mode == 'min' else 'higher'} is better)")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    else:
        groups = [g for g in data["groups"] if _finite(g.get("mean")) is not None]
        labels = [", ".join(f"{k}={_short(str(g['overrides'].get(k, '-')))}" for k in data["varying"]) or "(all jobs)" for g in groups]
        fig = Figure(figsize=(9, max(3.0, 0.45 * len(groups) + 1.8)), layout="constrained")
        ax = fig.add_subplot()
        ys = list(range(len(groups)))[::-1]  # rank 1 on top
        means = [g["mean"] for g in groups]
        low = [g["mean"] - g["ci95_low"] if _finite(g.get("ci95_low")) is not None else 0.0 for g in groups]
        high = [g["ci95_high"] - g["mean"] if _finite(g.get("ci95_high")) is not None else 0.0 for g in groups]
        ax.barh(ys, means, xerr=[low, high], color="tab:blue", alpha=0.85, capsize=4, ecolor="black")
        ax.set_yticks(ys, [f"#{g['rank']}  {label}  (n={g['n']})" for g, label in zip(groups, labels)], fontsize=8)
        ax.set_xlabel(f"mean best validation {data['metric']} (error bars: 95% t interval)")
        ax.set_title(f"sweep ranked by {data['metric']} ({'lower' if data['mode'] == 'min' else 'higher'} is better)")
        ax.grid(True, axis="x", alpha=0.3)
    return _save_figure(fig, path)


def write_summary(summary: Summary, sweep_dir: str | Path, keep_history: bool = False) -> list[Path]:
    """Write summary.json, summary.csv, summary.png and summary.html into the sweep dir, each replaced atomically
    (the same names every time: no pile-up); `keep_history` also keeps timestamped copies of the JSON and CSV.
    Returns the paths written."""
    from emotrain.reports_html import sweep_summary_html

    sweep_dir, stamp = Path(sweep_dir), summary.data["created"]
    json_path, csv_path, png_path, html_path = (sweep_dir / name for name in SUMMARY_FILES)
    write_json(json_path, summary.data)
    atomic_write(csv_path, lambda fh: summary.table.to_csv(fh, index=False))
    plot_summary(summary, png_path)
    title = ("K-fold cross-validation" if summary.kind == "kfold" else "Sweep results") + f": {sweep_dir}"
    table = summary.table
    rows = [[None if (isinstance(v, float) and v != v) else v for v in row] for row in table.itertuples(index=False)]
    notes = [line for line in summary.text.splitlines() if line.startswith(("Folds:", "Jobs:", "Objective:", "Ranked by", "WARNING"))]
    page = sweep_summary_html(title, summary.text, [str(c) for c in table.columns], rows, png_path, notes)
    atomic_write(html_path, lambda fh: fh.write(page))
    summary.files = [json_path, csv_path, png_path, html_path]
    if keep_history:
        prefix = "kfold_results" if summary.kind == "kfold" else "sweep_results"
        stamped = [sweep_dir / f"{prefix}_{stamp}.json", sweep_dir / f"{prefix}_{stamp}.csv"]
        write_json(stamped[0], summary.data)
        atomic_write(stamped[1], lambda fh: summary.table.to_csv(fh, index=False))
        summary.files += stamped
    return summary.files


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="emotrain-summarize",
        description="Summarise a Hydra multirun of emotrain: k-fold cross-validation results, or a ranked table of a sweep's groups.",
        epilog="Exit status: 0 every job completed, 1 some jobs failed or are missing (summarised without them), 2 usage error.",
    )
    p.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the multirun directory (hydra.sweep.dir), e.g. multirun/2024-05-01/12-00-00-123456")
    p.add_argument("--metric", action="append", default=None, metavar="NAME",
                   help="validation metric to report (flat name: loss, macro_f1, emotion/macro_f1, ...); repeatable; the first ranks a sweep. "
                        "Default: the jobs' objective (trainer.monitor); k-fold always reports loss too")
    p.add_argument("--mode", choices=("min", "max"), default=None, help="whether lower or higher --metric is better (default: the objective's mode; min for losses, max otherwise)")
    p.add_argument("--aggregate", action="append", default=[], metavar="KEY",
                   help="also pool jobs over this override key, like cv.fold (e.g. --aggregate seed); repeatable")
    p.add_argument("--kind", choices=("auto", "kfold", "sweep"), default="auto", help="force the k-fold report or the ranked table (default: auto)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write the summary files")
    p.add_argument("--keep-history", action="store_true",
                   help="also keep timestamped copies (kfold_results_<time>.json/.csv or sweep_results_...) besides summary.json/.csv")
    return p


def main(argv: Sequence[str] | None = None, out: Callable[[str], None] = print) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = summarize(args.sweep_dir, args.metric, args.mode, args.aggregate, args.kind, write=False)
    except SummaryError as e:
        print(f"emotrain-summarize: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    out(summary.text)
    if not args.no_write:
        try:
            write_summary(summary, args.sweep_dir, keep_history=args.keep_history)
        except OSError as e:
            print(f"emotrain-summarize: error: cannot write the results into {args.sweep_dir}: {e} (use --no-write)", file=sys.stderr)
            return EXIT_USAGE
        for path in summary.files:
            out(f"wrote {path}")
    return summary.exit_code


def cli() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `emotrain-summarize DIR | head`
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    sys.exit(code)


if __name__ == "__main__":
    cli()
