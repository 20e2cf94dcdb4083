"""What a Hydra multirun came to: its jobs (from their run directories) and the Summary they add up to.

emotrain.summarize renders a Summary (text, summary.json/.csv/.png/.html) and is the CLI; the
Hydra callbacks read the jobs asked for from here too. See emotrain.summarize for the reports.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from emotrain.utils import best_index, finite_or_none, json_safe

log = logging.getLogger("emotrain.summarize")

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2

FOLD_KEY = "cv.fold"
EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE = 0, 1, 2


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
    status_newer = status_info is not None and (
        metrics is None or status_path.stat().st_mtime >= metrics_path.stat().st_mtime
    )
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
    return Job(
        name=name,
        path=path,
        num=num,
        overrides=[str(o) for o in overrides],
        status=status,
        reason=reason,
        metrics=metrics,
        cv=cv,
    )


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
            jobs.append(
                Job(
                    name=f"job {i}",
                    path=None,
                    num=i,
                    overrides=overrides,
                    status="missing",
                    reason="not started: no job directory",
                )
            )
    return sorted(jobs, key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.name))


# --------------------------------------------------------------------------- values and statistics


def infer_mode(metric: str, objective: dict | None = None) -> str:
    if objective and objective.get("metric") == metric and objective.get("mode") in ("min", "max"):
        return str(objective["mode"])
    return "min" if metric.split("/")[-1].endswith("loss") else "max"


def job_values(metrics: dict, metric: str) -> dict[str, float]:
    """`metric` at the kept evaluation ("best": the one trainer.monitor chose, metrics.json's best_val), at the
    last evaluation ("final") and on test; NaN where absent. Never the best over epochs: a summary ranks and
    reports the models the runs kept, not epochs no saved model has."""
    best = finite_or_none((metrics.get("best_val") or {}).get(metric))
    kept_step = (metrics.get("best") or {}).get("step")
    if best is None:  # best_val without this metric (an older metrics.json): the kept evaluation's history entry
        for h in metrics.get("history") or []:
            same = h.get("step") == kept_step if kept_step is not None else h.get("epoch") == metrics.get("best_epoch")
            if same and metrics.get("best_epoch") is not None:
                best = finite_or_none((h.get("val") or {}).get(metric))
    final = finite_or_none((metrics.get("final_val") or {}).get(metric))
    test = finite_or_none((metrics.get("test") or {}).get(metric))
    nan = float("nan")
    return {
        "best": nan if best is None else best,
        "final": nan if final is None else final,
        "test": nan if test is None else test,
    }


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
    return {
        "n": n,
        "mean": mean,
        "std": std,
        "min": float(v.min()),
        "max": float(v.max()),
        "ci95_low": low,
        "ci95_high": high,
    }


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
    """What a sweep came to (computed by `summarize`); `text`, the files and the page render it."""

    kind: str  # kfold | sweep
    data: dict  # summary.json
    complete: bool
    table: Any = None  # the CSV's rows (a DataFrame)
    missing_lines: list[str] = field(default_factory=list)  # the failed or missing jobs, one line each
    files: list[Path] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.complete else EXIT_INCOMPLETE

    @property
    def text(self) -> str:
        from emotrain.summarize import render_kfold_text, render_sweep_text

        return render_kfold_text(self) if self.kind == "kfold" else render_sweep_text(self)


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
            records.append(
                {
                    "job": j.name,
                    "num": j.num,
                    "fold": j.fold,
                    "status": j.status,
                    "reason": j.reason,
                    "overrides": j.overrides,
                }
            )
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
    done = sorted((j for j in jobs if j.ok), key=lambda j: j.fold if j.fold is not None else 1 << 30)
    missing_folds = _missing_folds(jobs, cv)
    complete = not missing_folds and all(j.ok for j in jobs)
    bad_lines, bad_records = _missing_section(jobs)

    per_fold = []
    for j in jobs:
        row = {"fold": j.fold, "job": j.name, "status": j.status, "best_epoch": (j.metrics or {}).get("best_epoch")}
        for m in chosen:
            vals = (
                job_values(j.metrics, m)
                if j.ok
                else {"best": float("nan"), "final": float("nan"), "test": float("nan")}
            )
            row.update({f"best_val_{m}": vals["best"], f"final_val_{m}": vals["final"], f"test_{m}": vals["test"]})
        if not j.ok:
            row["reason"] = j.reason
        per_fold.append(row)
    per_fold.sort(key=lambda r: (r["fold"] is None, r["fold"] if r["fold"] is not None else 0, r["job"]))

    stats: dict[str, dict] = {}
    for m in chosen:
        ok_rows = [r for r in per_fold if r["status"] == "completed"]
        finite = [r for r in ok_rows if finite_or_none(r[f"best_val_{m}"]) is not None]
        best_row = finite[best_index([r[f"best_val_{m}"] for r in finite], modes[m])] if finite else None
        stats[m] = {
            "mode": modes[m],
            "best_val": describe([r[f"best_val_{m}"] for r in ok_rows]),
            "final_val": describe([r[f"final_val_{m}"] for r in ok_rows]),
            "test": describe([r[f"test_{m}"] for r in ok_rows]),
            "best_fold": None
            if best_row is None
            else {"fold": best_row["fold"], "job": best_row["job"], "value": best_row[f"best_val_{m}"]},
        }

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
    return Summary(
        kind="kfold", data=json_safe(data), complete=complete, table=pd.DataFrame(per_fold), missing_lines=bad_lines
    )


def _sweep_summary(
    sweep_dir: Path, jobs: list[Job], groups: dict, metrics, mode, objective, stamp, aggregate: Sequence[str] = ()
) -> Summary:
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
        vals = [job_values(j.metrics, metric) for j in ok]
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
        row.update(
            {
                "n": s["n"],
                "of": expected,
                "mean": s["mean"],
                "std": s["std"],
                "ci95_low": s["ci95_low"],
                "ci95_high": s["ci95_high"],
                "test_mean": test["mean"],
            }
        )
        for m in extra:
            row[f"{m}_mean"] = describe([job_values(j.metrics, m)["best"] for j in ok])["mean"]
        row["_jobs"] = [j.name for j in group]
        row["_missing_folds"] = missing_folds
        row["_overrides"] = dicts[key]
        rows.append(row)

    def rank_key(r):
        v = finite_or_none(r["mean"])
        return (v is None, 0.0 if v is None else (v if m_mode == "min" else -v))

    rows.sort(key=rank_key)
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    complete = all(j.ok for j in jobs) and not missing_folds_total
    table = pd.DataFrame([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
    table = table[["rank"] + [c for c in table.columns if c != "rank"]]
    bad_lines, bad_records = _missing_section(jobs)
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
        "aggregate": [FOLD_KEY, *aggregate],
        "n_jobs": len(jobs),
        "n_completed": sum(j.ok for j in jobs),
        "groups": [
            {
                **{k: v for k, v in r.items() if not k.startswith("_")},
                "overrides": r["_overrides"],
                "jobs": r["_jobs"],
                "missing_folds": r["_missing_folds"],
            }
            for r in rows
        ],
        "missing": bad_records,
        "jobs": [
            {
                "job": j.name,
                "num": j.num,
                "status": j.status,
                "fold": j.fold,
                "overrides": j.overrides,
                "values": job_values(j.metrics, metric) if j.ok else None,
            }
            for j in jobs
        ],
    }
    return Summary(kind="sweep", data=json_safe(data), complete=complete, table=table, missing_lines=bad_lines)


def compute_summary(
    sweep_dir: str | Path,
    metrics: Sequence[str] | None = None,
    mode: str | None = None,
    aggregate: Sequence[str] = (),
    kind: str = "auto",
) -> Summary:
    """What the multirun in `sweep_dir` came to (nothing written); raises SummaryError on usage errors."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.exists():
        raise SummaryError(f"{sweep_dir}: no such directory")
    if not sweep_dir.is_dir():
        raise SummaryError(f"{sweep_dir}: not a directory")
    if mode not in (None, "min", "max"):
        raise SummaryError(f"--mode {mode}: use min or max")
    jobs = collect_jobs(sweep_dir)
    if not jobs:
        raise SummaryError(
            f"{sweep_dir}: no jobs found (no job directory with .hydra/overrides.yaml, metrics.json or status.json); "
            "pass a multirun sweep directory"
        )
    done = [j for j in jobs if j.ok]
    objective = next((j.metrics.get("objective") for j in done if j.metrics.get("objective")), None)
    if objective:  # what the jobs optimised; its "value" is one job's, not the sweep's
        objective = {k: v for k, v in objective.items() if k != "value"}
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
    return summary
