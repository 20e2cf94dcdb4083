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

"best" is a metric's validation value at the evaluation each job kept (the one its
trainer.monitor chose: metrics.json's best_val), never the best over epochs, so every number
belongs to a saved model; "final" the last evaluation's; "test" the test split's, evaluated
with those kept weights. --mode sets which direction ranks (default: the objective's; min
for losses, max otherwise).
Standard deviations are sample standard deviations (ddof=1).

Failed, interrupted and missing jobs are listed by name with the reason and left out of
every statistic; folds missing from a k-fold group are named. Exit status: 0 when every
job asked for completed, 1 when some did not (the summary covers the rest), 2 on a usage
error (no such directory, no jobs, unknown metric).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from emotrain.io import atomic_write, write_json
from emotrain.sweeps import EXIT_OK, EXIT_USAGE, Summary, SummaryError, compute_summary
from emotrain.utils import OneLineArgumentParser, finite_or_none


def summarize(
    sweep_dir: str | Path,
    metrics: Sequence[str] | None = None,
    mode: str | None = None,
    aggregate: Sequence[str] = (),
    kind: str = "auto",
    write: bool = True,
) -> Summary:
    """Summarise the multirun in `sweep_dir` (and write its summary files); raises SummaryError on usage errors."""
    summary = compute_summary(sweep_dir, metrics, mode, aggregate, kind)
    if write:
        write_summary(summary, sweep_dir)
    return summary


NUM = "{:.6f}"


def _fmt(x: Any) -> str:
    x = finite_or_none(x)
    return "n/a" if x is None else NUM.format(x)


def _short(value: str) -> str:
    """An override value for display: long floats (Optuna's samples) to 4 significant digits."""
    if (
        len(value) > 10
        and re.fullmatch(r"[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", value)
        and not value.lstrip("+-").isdigit()
    ):
        short = f"{float(value):.4g}"
        return short if len(short) < len(value) else value
    return value


def _pm(stats: dict) -> str:
    return f"{_fmt(stats['mean'])} ± {_fmt(stats['std'])}"


def render_kfold_text(summary: Summary) -> str:
    """The K-FOLD CROSS-VALIDATION RESULTS report of a k-fold Summary."""
    import pandas as pd

    data = summary.data
    k, cv, objective = data["k"], data["cv"] or {}, data["objective"]
    n_done = len(data["completed_folds"])
    lines = ["=" * 72, "K-FOLD CROSS-VALIDATION RESULTS", "=" * 72, f"Sweep: {data['sweep_dir']}"]
    lines.append(
        f"Folds: {n_done} of k={k} completed (split seed {cv.get('seed')}, stratified={cv.get('stratified')}, "
        f"include_val={cv.get('include_val')})"
    )
    if objective:
        lines.append(
            f"Objective: {objective.get('split', 'val')} {objective.get('metric')} ({objective.get('mode')}); 'best' "
            "= the value at the evaluation each fold kept (by that objective)"
        )
    if not summary.complete:
        missing = data["missing_folds"]
        lines.append(
            f"WARNING: statistics below cover {n_done} of {k} folds"
            + (f"; folds without results: {', '.join(map(str, missing))}" if missing else "")
        )
    lines += summary.missing_lines
    nan = float("nan")
    for m in data["metrics"]:
        stats = data["summary"][m]
        direction = "lower" if stats["mode"] == "min" else "higher"
        label = "validation loss" if m == "loss" else f"validation {m}"
        table = pd.DataFrame(
            [
                {
                    "fold": "-" if r["fold"] is None else r["fold"],
                    "job": r["job"],
                    "best_epoch": "-" if r["best_epoch"] is None else r["best_epoch"],
                    f"best_val_{m}": nan if r[f"best_val_{m}"] is None else r[f"best_val_{m}"],
                    f"final_val_{m}": nan if r[f"final_val_{m}"] is None else r[f"final_val_{m}"],
                    f"test_{m}": nan if r[f"test_{m}"] is None else r[f"test_{m}"],
                    "status": r["status"],
                }
                for r in data["folds"]
            ]
        )
        best, final, test = (_nan_stats(stats[key]) for key in ("best_val", "final_val", "test"))
        lines += ["", f"{label[0].upper()}{label[1:]} at each fold's kept epoch ('best'; {direction} is better):"]
        lines += [
            "  " + line for line in table.to_string(index=False, float_format=NUM.format, na_rep="-").splitlines()
        ]
        lines.append(f"Mean best {label}:  {_pm(best)}  (n={best['n']})")
        lines.append(f"Mean final {label}: {_pm(final)}  (n={final['n']})")
        lines.append(f"Min / max best {label}: {_fmt(best['min'])} / {_fmt(best['max'])}")
        if stats["best_fold"] is not None:
            b = stats["best_fold"]
            lines.append(f"Best fold: {b['fold']} (best {label} {_fmt(b['value'])}, job {b['job']})")
        lines.append(f"Mean test {m}: {_pm(test)}  (n={test['n']})")
    lines.append("=" * 72)
    return "\n".join(lines)


def _nan_stats(stats: dict) -> dict:
    """describe()'s values after a JSON round trip (NaN became None) as numbers again."""
    return {key: float("nan") if value is None else value for key, value in stats.items()}


def render_sweep_text(summary: Summary) -> str:
    """The SWEEP RESULTS report of a sweep Summary: the groups ranked best first."""
    data = summary.data
    direction = "lower" if data["mode"] == "min" else "higher"
    lines = [
        "=" * 72,
        "SWEEP RESULTS",
        "=" * 72,
        f"Sweep: {data['sweep_dir']}",
        f"Jobs: {data['n_completed']} of {data['n_jobs']} completed, {len(data['groups'])} groups (overrides minus "
        f"{', '.join(data['aggregate'])})",
    ]
    lines.append(
        f"Ranked by mean validation {data['metric']} at each job's kept evaluation ({direction} is better); std: "
        "sample (ddof=1); ci95: t distribution"
    )
    if not summary.complete:
        lines.append(
            f"WARNING: {data['n_jobs'] - data['n_completed']} job(s) without results; their groups' statistics cover "
            "fewer jobs (see n / of)"
        )
    if "seed" in data["varying"]:
        lines.append(
            "Note: seed varies, so each seed is its own group (n=1, no interval); pass --aggregate seed to pool "
            "seeds as replicates (mean, std and 95% CI per setting)"
        )
    lines += summary.missing_lines
    for g in data["groups"]:
        if g["missing_folds"]:
            lines.append(f"  group rank {g['rank']}: folds without results: {', '.join(map(str, g['missing_folds']))}")
    lines.append("")
    shown = summary.table.copy()
    for column in data["varying"]:  # Optuna's long float samples, shortened on screen (full values in the CSV/JSON)
        shown[column] = shown[column].map(_short)
    lines += shown.to_string(index=False, float_format=NUM.format, na_rep="-").splitlines()
    lines.append("=" * 72)
    return "\n".join(lines)


SUMMARY_FILES = ("summary.json", "summary.csv", "summary.png", "summary.html")


def plot_summary(summary: Summary, path: Path) -> Path:
    """k-fold: the validation value at each fold's kept epoch with the mean and a ± std band; a sweep: the groups
    ranked, best on top, each with its 95% confidence interval."""
    from matplotlib.figure import Figure

    from emotrain.reports import _save_figure

    data = summary.data
    if summary.kind == "kfold":
        metric = next((m for m in data["metrics"] if m != "loss"), "loss")
        mode = data["summary"][metric]["mode"]
        folds = [
            f
            for f in data["folds"]
            if f["status"] == "completed" and finite_or_none(f.get(f"best_val_{metric}")) is not None
        ]
        fig = Figure(figsize=(max(8.0, 0.9 * len(folds) + 3), 5.2), layout="constrained")
        ax = fig.add_subplot()
        xs = list(range(len(folds)))  # numeric positions, fold numbers as tick labels
        ax.set_xticks(xs, [str(f["fold"]) for f in folds])
        ax.bar(
            xs,
            [f[f"best_val_{metric}"] for f in folds],
            color="tab:blue",
            alpha=0.85,
            label=f"validation {metric} (kept epoch)",
        )
        tests = [
            (x, f.get(f"test_{metric}"))
            for x, f in zip(xs, folds)
            if finite_or_none(f.get(f"test_{metric}")) is not None
        ]
        if tests:
            ax.plot([x for x, _ in tests], [v for _, v in tests], "D", color="tab:orange", label=f"test {metric}")
        stats = data["summary"][metric]["best_val"]
        if finite_or_none(stats.get("mean")) is not None:
            std = finite_or_none(stats.get("std")) or 0.0
            label = f"mean {stats['mean']:.4f} ± {std:.4f} (sample std)"
            ax.axhline(stats["mean"], color="black", ls="--", lw=1.2, label=label)
            ax.axhspan(stats["mean"] - std, stats["mean"] + std, color="grey", alpha=0.15)
        ax.set_xlabel("fold")
        ax.set_ylabel(metric)
        ax.set_title(
            f"{data['k']}-fold cross-validation ({len(folds)} of {data['k']} folds): validation {metric} at the kept "
            f"epoch, per fold ({'lower' if mode == 'min' else 'higher'} is better)",
            fontsize=10,
        )
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=2, fontsize=8, frameon=False)
        ax.grid(True, axis="y", alpha=0.3)
    else:
        groups = [g for g in data["groups"] if finite_or_none(g.get("mean")) is not None]
        labels = [
            ", ".join(f"{k}={_short(str(g['overrides'].get(k, '-')))}" for k in data["varying"]) or "(all jobs)"
            for g in groups
        ]
        fig = Figure(figsize=(9, max(3.0, 0.45 * len(groups) + 1.8)), layout="constrained")
        ax = fig.add_subplot()
        ys = list(range(len(groups)))[::-1]  # rank 1 on top
        means = [g["mean"] for g in groups]
        low = [g["mean"] - g["ci95_low"] if finite_or_none(g.get("ci95_low")) is not None else 0.0 for g in groups]
        high = [g["ci95_high"] - g["mean"] if finite_or_none(g.get("ci95_high")) is not None else 0.0 for g in groups]
        ax.barh(ys, means, xerr=[low, high], color="tab:blue", alpha=0.85, capsize=4, ecolor="black")
        ax.set_yticks(ys, [f"#{g['rank']}  {label}  (n={g['n']})" for g, label in zip(groups, labels)], fontsize=8)
        ax.set_xlabel(f"mean validation {data['metric']} at the kept epoch (error bars: 95% t interval)")
        ax.set_title(f"sweep ranked by {data['metric']} ({'lower' if data['mode'] == 'min' else 'higher'} is better)")
        ax.grid(True, axis="x", alpha=0.3)
    return _save_figure(fig, path)


KFOLD_STATS_HEADERS = ("metric", "split", "n", "mean ± std", "ci95", "min", "max", "best fold")


def _kfold_stats_rows(data: dict) -> list[list]:
    """The k-fold page's statistics table: per metric and split (kept-epoch validation, final, test)."""
    rows = []
    for metric, entry in data["summary"].items():
        for split, label in (("best_val", "val (kept epoch)"), ("final_val", "val (last epoch)"), ("test", "test")):
            st = entry.get(split) or {}
            if not st.get("n"):
                continue
            rows.append(
                [
                    metric,
                    label,
                    st["n"],
                    _pm(st),
                    f"[{_fmt(st.get('ci95_low'))}, {_fmt(st.get('ci95_high'))}]",
                    finite_or_none(st.get("min")),
                    finite_or_none(st.get("max")),
                    (entry.get("best_fold") or {}).get("fold") if split == "best_val" else "",
                ]
            )
    return rows


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
    notes = [
        line
        for line in summary.text.splitlines()
        if line.startswith(("Folds:", "Jobs:", "Objective:", "Ranked by", "WARNING", "Note:"))
    ]
    stats = (KFOLD_STATS_HEADERS, _kfold_stats_rows(summary.data)) if summary.kind == "kfold" else None
    page = sweep_summary_html(title, summary.text, [str(c) for c in table.columns], rows, png_path, notes, stats)
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
    p = OneLineArgumentParser(
        prog="emotrain-summarize",
        description="Summarise a Hydra multirun of emotrain: k-fold cross-validation results, or a ranked table of a "
        "sweep's groups, each job's values taken at the evaluation it kept. Prints the summary and writes "
        "summary.json, summary.csv, summary.png and summary.html (one self-contained page) into SWEEP_DIR, "
        "replacing the previous ones.",
        epilog="Exit status: 0 every job completed, 1 some jobs failed or are missing (summarised without them), 2 "
        "usage error.",
    )
    p.add_argument(
        "sweep_dir",
        metavar="SWEEP_DIR",
        help="the multirun directory (hydra.sweep.dir), e.g. multirun/2024-05-01/12-00-00-123456",
    )
    p.add_argument(
        "--metric",
        action="append",
        default=None,
        metavar="NAME",
        help="validation metric to report (flat name: loss, macro_f1, emotion/macro_f1, ...); repeatable; the first "
        "ranks a sweep. "
        "Default: the jobs' objective (trainer.monitor); k-fold always reports loss too",
    )
    p.add_argument(
        "--mode",
        choices=("min", "max"),
        default=None,
        help="whether lower or higher --metric is better (default: the objective's mode; min for losses, max "
        "otherwise)",
    )
    p.add_argument(
        "--aggregate",
        action="append",
        default=[],
        metavar="KEY",
        help="also pool jobs over this override key, like cv.fold (e.g. --aggregate seed); repeatable",
    )
    p.add_argument(
        "--kind",
        choices=("auto", "kfold", "sweep"),
        default="auto",
        help="force the k-fold report or the ranked table (default: auto)",
    )
    p.add_argument("--no-write", action="store_true", help="print only; do not write the summary files")
    p.add_argument(
        "--keep-history",
        action="store_true",
        help="also keep timestamped copies (kfold_results_<time>.json/.csv or sweep_results_...) besides "
        "summary.json/.csv",
    )
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
            print(
                f"emotrain-summarize: error: cannot write the results into {args.sweep_dir}: {e} (use --no-write)",
                file=sys.stderr,
            )
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
