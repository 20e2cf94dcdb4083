"""Training report: loss/metric curves, per-class F1 bars, confusion matrices, report.json and summary.txt.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas: no display is
needed, pyplot's global figure registry is never touched (nothing to leak), and a caller's
interactive backend is left alone. Every file is written atomically.
"""

from __future__ import annotations

import datetime as _dt
import io
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import Path

import matplotlib

if "matplotlib.pyplot" not in sys.modules:  # headless by default; never switch a backend someone already uses
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from emotrain.config import flatten_dict  # noqa: E402
from emotrain.console import FILE_ONLY  # noqa: E402
from emotrain.inference.predictions import PREDICTIONS_FILE  # noqa: E402
from emotrain.io import atomic_write, finite_or_none, write_json  # noqa: E402
from emotrain.utils import best_index, json_safe  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["flatten_config", "generate_training_report"]

DPI = 120


# --------------------------------------------------------------------------- helpers


def _fmt(x) -> str:
    """Numbers with 4 decimals, "n/a" for missing / non-finite."""
    if x is None:
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    v = finite_or_none(x)
    if v is None:
        return "n/a" if isinstance(x, (float, np.floating)) else str(x)
    return f"{v:.4f}"


def _hp(x) -> str:
    """A config value as written in the config (no rounding: 2e-05 stays 2e-05)."""
    return "null" if x is None else str(x)


def flatten_config(cfg, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    cfg = json_safe(cfg) if cfg is not None else {}
    if not isinstance(cfg, dict):
        return {prefix or "value": cfg}
    return flatten_dict(cfg, prefix)


def _save_figure(fig: Figure, path: Path) -> Path:
    """Render to PNG in memory, then write atomically."""
    try:
        FigureCanvasAgg(fig)
        buf = io.BytesIO()
        # bbox "tight": nothing (e.g. an axis label next to long tick labels) can end up outside the canvas.
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    finally:
        fig.clear()  # figures are not registered with pyplot; clearing frees the artists
    data = buf.getvalue()
    return atomic_write(path, lambda fh: fh.write(data), binary=True)


def _series(values, key=None) -> tuple[list[int], list[float]]:
    """(epochs, values) keeping only finite points; `key` picks from per-epoch dicts."""
    xs, ys = [], []
    for i, v in enumerate(values or [], start=1):
        if key is not None:
            v = v.get(key) if isinstance(v, Mapping) else None
        v = finite_or_none(v)
        if v is not None:
            xs.append(i)
            ys.append(v)
    return xs, ys


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Integer epoch ticks (a 1-epoch run gets one tick at 1, not 0.75-1.25)."""
    ax.set_xlabel("Epoch")
    last = max(epochs) if epochs else 1
    if last <= 20:
        ax.set_xticks(list(range(1, last + 1)))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlim(0.5, last + 0.5)
    ax.grid(True, alpha=0.3)


def default_best(val_losses) -> dict:
    """Without a monitored metric: the epoch of the lowest finite validation loss (first one on ties)."""
    values = [finite_or_none(v) for v in val_losses or []]
    i = best_index(values, "min")
    return {
        "epoch": None if i is None else i + 1,
        "metric": "loss",
        "mode": "min",
        "value": None if i is None else values[i],
    }


def describe_best(best: Mapping) -> str:
    """'epoch 8 (by val emotion/accuracy, max = 0.6714)': which evaluation was kept, and why."""
    if not best or best.get("epoch") is None:
        return "n/a"
    return (
        f"epoch {best['epoch']} (by val {best.get('metric', 'loss')}, "
        f"{best.get('mode', 'min')} = {_fmt(best.get('value'))})"
    )


# Per-task series of the validation curves: (metric key suffix, legend label, line style, marker).
_MULTILABEL_SERIES = (
    ("macro_f1", "macro-F1 at 0.5", "-", "o"),
    ("macro_f1_tuned", "macro-F1 at thresholds tuned per epoch", "--", "s"),
    ("macro_f1_fixed", "macro-F1 at the fixed threshold", "--", "s"),
    ("micro_f1", "micro-F1 at 0.5", ":", "^"),
    ("micro_f1_tuned", "micro-F1 at tuned thresholds", "-.", "v"),
    ("micro_f1_fixed", "micro-F1 at the fixed threshold", "-.", "v"),
    ("subset_accuracy", "subset accuracy at 0.5", (0, (1, 3)), "d"),
)
# Single-label tasks: micro-F1 equals accuracy, so only accuracy is drawn.
_SINGLE_LABEL_SERIES = (("macro_f1", "macro-F1", "-", "o"), ("accuracy", "accuracy (= micro-F1)", "--", "s"))


def _task_groups(val_metrics) -> dict[str, bool]:
    """{task: multi-label?} in first-seen order (multi-label tasks report subset_accuracy)."""
    tasks: dict[str, bool] = {}
    for d in val_metrics:
        for key in d or {}:
            task, _, metric = key.rpartition("/")
            if task:
                tasks[task] = tasks.get(task, False) or metric.startswith("subset_accuracy")
    return tasks


# --------------------------------------------------------------------------- figures


def plot_loss_curves(
    train_losses, val_losses, val_metrics, path: Path, title: str, best: Mapping | None = None
) -> Path:
    return _save_figure(loss_curves_figure(train_losses, val_losses, val_metrics, title, best), path)


def loss_curves_figure(train_losses, val_losses, val_metrics, title: str, best: Mapping | None = None) -> Figure:
    """Train and validation loss per epoch; the star marks the kept (best) epoch and says which metric chose it."""
    n = max(len(train_losses or []), len(val_losses or []), 1)
    best = best or default_best(val_losses)
    fig = Figure(figsize=(8, 6), layout="constrained")
    ax = fig.add_subplot()
    xs, ys = _series(train_losses)
    if xs:
        ax.plot(xs, ys, "o-", color="tab:blue", lw=2, label="train loss")
    xs, ys = _series(val_losses)
    if xs:
        ax.plot(xs, ys, "s-", color="tab:orange", lw=2, label="validation loss")
    task_keys = []
    for d in val_metrics or []:
        for k in d or {}:
            if k.endswith("/loss") and k not in task_keys:
                task_keys.append(k)
    task_colors = ["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray"]
    for i, k in enumerate(task_keys):  # colours of their own: blue and orange are the train and validation loss
        xs, ys = _series(val_metrics, k)
        if xs:
            color = task_colors[i % len(task_colors)]
            ax.plot(xs, ys, ":", marker=".", color=color, lw=1.2, alpha=0.9, label=f"validation {k}")
    epoch = best.get("epoch")
    if epoch is not None and 1 <= epoch <= len(val_losses or []) and finite_or_none(val_losses[epoch - 1]) is not None:
        ax.axvline(epoch, color="grey", ls="--", lw=1)
        ax.plot(
            [epoch],
            [val_losses[epoch - 1]],
            "*",
            color="tab:red",
            ms=16,
            mfc="none",
            mew=1.8,
            zorder=5,
            label=f"kept: {describe_best(best)}",
        )  # hollow: the validation point it marks stays visible
    if not ax.lines:
        ax.text(0.5, 0.5, "no losses recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_ylabel("Loss")
    _epoch_axis(ax, list(range(1, n + 1)))
    ax.margins(y=0.08)  # no point on the frame
    if ax.get_legend_handles_labels()[0]:  # below the axes: it never covers a curve
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=2, fontsize=9, frameon=False)
    return fig


def _draw_series(ax, data, key: str, label: str, style, marker: str, color) -> list[float]:
    xs, ys = _series(data, key)
    if xs:
        ax.plot(xs, ys, linestyle=style, marker=marker, color=color, lw=1.6, ms=5, label=label)
    return ys


def plot_metric_curves(train_metrics, val_metrics, path: Path, title: str, best: Mapping | None = None) -> Path:
    return _save_figure(metric_curves_figure(train_metrics, val_metrics, title, best), path)


def metric_curves_figure(train_metrics, val_metrics, title: str, best: Mapping | None = None) -> Figure:
    """One panel per task (validation split; multi-label tasks at 0.5 and at the kept model's thresholds), and one
    with every task's macro-F1 and their mean. Training curves are drawn only when training metrics are given."""
    train_metrics = [d for d in (train_metrics or [])]
    val_metrics = list(val_metrics or [])
    n = max(len(train_metrics), len(val_metrics), 1)
    tasks = _task_groups(val_metrics)
    panels = list(tasks) + (["macro-F1 by task"] if tasks else [])
    ncols = min(2, max(len(panels), 1))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(6.5 * ncols, 4.4 * nrows), layout="constrained")
    fig.suptitle(title, fontsize=13)
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no metrics recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return fig
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    has_train = any(d for d in train_metrics)
    epoch = (best or {}).get("epoch")
    for ax, panel in zip(axes, panels):
        values: list[float] = []
        if panel in tasks:
            multilabel = tasks[panel]
            for i, (metric, label, style, marker) in enumerate(
                _MULTILABEL_SERIES if multilabel else _SINGLE_LABEL_SERIES
            ):
                values += _draw_series(
                    ax, val_metrics, f"{panel}/{metric}", label, style, marker, colors[i % len(colors)]
                )
                if has_train:
                    values += _draw_series(
                        ax,
                        train_metrics,
                        f"{panel}/{metric}",
                        f"train {label}",
                        (0, (2, 2)),
                        "x",
                        colors[i % len(colors)],
                    )
            kind = "multi-label" if multilabel else "single-label"
            ax.set_title(f"task {panel} ({kind}), validation split")
        else:
            for i, task in enumerate(tasks):
                suffix = next(
                    (s for s in ("_tuned", "_fixed") if any(f"{task}/macro_f1{s}" in d for d in val_metrics)), ""
                )
                how = {"_tuned": " (tuned thresholds)", "_fixed": " (fixed threshold)"}.get(suffix, "")
                values += _draw_series(
                    ax, val_metrics, f"{task}/macro_f1{suffix}", f"{task}{how}", "-", "o", colors[i % len(colors)]
                )
            mean_key = next(
                (k for k in ("macro_f1_tuned", "macro_f1_fixed") if any(k in d for d in val_metrics)), "macro_f1"
            )
            values += _draw_series(ax, val_metrics, mean_key, "mean over tasks", "--", "s", "black")
            ax.set_title("macro-F1 of every task, validation split")
        if epoch is not None:
            ax.axvline(epoch, color="grey", ls="--", lw=1, label=f"kept: epoch {epoch}")
        ax.set_ylabel("Score")
        if values and 0.0 <= min(values) and max(values) <= 1.0:
            ax.set_ylim(-0.02, 1.02)
        _epoch_axis(ax, list(range(1, n + 1)))
        handles = ax.get_legend_handles_labels()[0]
        if handles:  # below the plot: never hides a curve
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8, frameon=False)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    return fig


def plot_per_class_f1(task: str, table: Mapping, path: Path, title: str) -> Path:
    """Horizontal F1 bars, best at the top, each annotated with F1 and support; height grows with the labels."""
    rows = [
        (str(label), finite_or_none((m or {}).get("f1")) or 0.0, (m or {}).get("support")) for label, m in table.items()
    ]
    rows.sort(key=lambda r: r[1])  # barh draws bottom-up: best ends on top
    n = len(rows)
    fig = Figure(figsize=(9, max(3.0, 0.3 * n + 1.6)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(n)
    f1 = [r[1] for r in rows]
    ax.barh(y, f1, color="tab:blue", alpha=0.85, height=0.7)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=9 if n <= 30 else 7)
    ax.set_ylim(-0.6, n - 0.4)
    for yi, (_, v, support) in zip(y, rows):
        s = "" if support is None else f"  (n={int(support)})"
        ax.text(
            v + 0.01,
            yi,
            f"{v:.2f}{s}",
            va="center",
            fontsize=8,
            zorder=4,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.6},
        )
    if n:
        macro = float(np.mean(f1))
        ax.axvline(macro, color="tab:red", ls="--", lw=1, zorder=3, label=f"macro F1 = {macro:.3f}")
        ax.legend(loc="lower right", fontsize=9)
    ax.set_xlim(0, 1.2)
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("F1 score  (bar labels: F1 and support n)")
    ax.set_ylabel("Class")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return _save_figure(fig, path)


def confusion_counts(spec: Mapping) -> tuple[list[str], np.ndarray]:
    """(labels, counts[true, pred]) from {"labels", "y_true", "y_pred"} with class ids or label names."""
    from sklearn.metrics import confusion_matrix

    labels = [str(x) for x in spec["labels"]]
    y_true, y_pred = np.asarray(spec["y_true"]), np.asarray(spec["y_pred"])
    if y_true.ndim != 1 or y_pred.shape != y_true.shape:
        raise ValueError(
            f"y_true/y_pred must be 1-D and of equal length (got {y_true.shape} and {y_pred.shape}); multi-label "
            "tasks have no confusion matrix"
        )
    if y_true.dtype.kind in "US" or y_pred.dtype.kind in "US" or y_true.dtype == object:
        ids = labels
        y_true, y_pred = y_true.astype(str), y_pred.astype(str)
    else:
        ids = list(range(len(labels)))
    return labels, confusion_matrix(y_true, y_pred, labels=ids)


def plot_confusion(task: str, labels: list[str], counts: np.ndarray, path: Path, title: str) -> Path:
    """Row-normalised confusion matrix; counts annotated when there are few classes."""
    n = len(labels)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=float), where=rows > 0)
    side = max(5.5, 0.42 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="fraction of the true class")
    size = 9 if n <= 15 else 8
    ax.set_xticks(np.arange(n), labels, rotation=45, ha="right", rotation_mode="anchor", fontsize=size)
    ax.set_yticks(np.arange(n), labels, fontsize=size)
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label")
    ax.set_title(title, fontsize=12 if n <= 15 else 14)
    if n <= 12:
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    f"{counts[i, j]}\n{norm[i, j]:.0%}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- summary


def _test_table(run: Mapping) -> list[str]:
    from emotrain.console import results_table

    return results_table(
        run.get("tasks") or [],
        run.get("test") or {},
        run.get("test_at_0.5") or {},
        n_test=(run.get("data_sizes") or {}).get("test", 0),
    )


def _threshold_lines(run: Mapping) -> list[str]:
    thresholds = run.get("thresholds") or {}
    labels = {t["name"]: t["labels"] for t in run.get("tasks") or []}
    lines = []
    for task, values in thresholds.items():
        if values and len({round(v, 4) for v in values}) == 1:  # a fixed threshold: one number, not a list
            lines.append(f"  {task}: {values[0]:.2f} for every label ({len(values)})")
            continue
        pairs = ", ".join(f"{label} {v:.2f}" for label, v in zip(labels.get(task, []), values))
        lines.append(f"  {task}: {pairs}")
    return lines


def _history_lines(history, monitor: str) -> list[str]:
    """One row per epoch: losses, validation macro-F1 (multi-label runs: at 0.5 and at thresholds tuned for that
    epoch) and the monitored metric unless it is one of those columns already."""
    vals = [h.get("val") or {} for h in history]
    columns = [("val loss", "loss"), ("macro-F1", "macro_f1")]
    tuned = next((k for v in vals for k in v if k.startswith("macro_f1_") and "/" not in k), None)
    if tuned:  # multi-label: the plain macro-F1 is at 0.5
        columns = [("val loss", "loss"), ("macro-F1@0.5", "macro_f1"), (f"macro-F1 {tuned[9:]}", tuned)]
    if monitor not in {key for _, key in columns}:
        columns.append((monitor, monitor))
    widths = [max(len(title), 9) for title, _ in columns]
    header = " ".join(f"{title:>{w}}" for (title, _), w in zip(columns, widths))
    lines = [f"  {'epoch':>5} {'step':>7} {'train loss':>11} {header}"]
    for h, val in zip(history, vals):
        if not h.get("epoch_done", True):
            continue
        cells = " ".join(f"{_fmt(val.get(key)):>{w}}" for (_, key), w in zip(columns, widths))
        lines.append(f"  {h.get('epoch', ''):>5} {h.get('step', ''):>7} {_fmt(h.get('train_loss')):>11} {cells}")
    return lines


def error_lines(errors: dict) -> list[str]:
    """Where the kept model errs on the test split (emotrain.inference.predictions.error_analysis)."""
    lines = []
    for task, info in errors.items():
        worst = ", ".join(f"{w['label']} {w['f1']:.2f} (n={w['support']})" for w in info.get("worst_labels") or [])
        confusions = ", ".join(f"{c['gold']} -> {c['predicted']} ({c['count']})" for c in info.get("confusions") or [])
        lines.append(f"  {task}: lowest F1: {worst or 'none'}")
        lines.append(f"  {' ' * len(task)}  most frequent errors (gold -> predicted): {confusions or 'none'}")
    return lines


def format_summary(
    hyperparameters, train_losses, val_losses, val_metrics, extra=None, *, best=None, run=None, errors=None
) -> str:
    """summary.txt: the answer first (test results per task, the kept epoch and why, thresholds, where the files
    are), then the training, then the configuration; every fact once."""
    best = best or default_best(val_losses)
    n = max(len(train_losses or []), len(val_losses or []))
    lines = ["EMOTRAIN RUN SUMMARY", "===================="]
    if run:
        lines.append(f"Status: {run.get('status', 'n/a')}" + (f" ({run['error']})" if run.get("error") else ""))
    lines.append(f"Kept model: {describe_best(best)}, of {n} epoch{'s' if n != 1 else ''}")
    if run and run.get("test"):
        lines += ["", "Test results (model of the kept epoch):"] + [f"  {line}" for line in _test_table(run)]
        decisions = run.get("decisions") or {}
        if decisions.get("applies_to"):
            lines.append(
                f"  thresholds of the multi-label tasks ({', '.join(decisions['applies_to'])}): "
                f"{decisions['description']}"
            )
        if run.get("thresholds"):
            lines += ["", "Decision thresholds per label:"] + _threshold_lines(run)
        if errors:
            lines += ["", f"Where it errs (test split; every prediction in {PREDICTIONS_FILE}):"] + error_lines(errors)
    elif run:
        lines += ["", "Test results: none (no test split, or training stopped before an evaluation)"]
    at_best = val_metrics_at(best["epoch"], val_metrics, run) if best.get("epoch") is not None else {}
    if at_best:
        lines += [
            "",
            "Validation at the kept epoch "
            f"({', '.join(f'{k} {_fmt(v)}' for k, v in at_best.items() if '/' not in k)}):",
        ]
        lines += [f"  {k}: {_fmt(v)}" for k, v in at_best.items() if "/" in k]
        suffixes = sorted({k.rsplit("macro_f1_", 1)[1] for k in at_best if "macro_f1_" in k})
        if suffixes:
            lines.append(
                "  multi-label tasks: plain F1 and accuracy values at threshold 0.5; "
                + ", ".join(f"*_{x}: at {x} thresholds" for x in suffixes)
                + " (tuned on val for that epoch where tuned)"
            )
    lines += ["", "Per epoch:"]
    if run and run.get("history"):
        lines += _history_lines(run["history"], best.get("metric", "loss"))
    else:
        lines.append(f"  {'epoch':>5} {'train loss':>11} {'val loss':>9}")
        for i in range(n):
            tl = train_losses[i] if i < len(train_losses or []) else None
            vl = val_losses[i] if i < len(val_losses or []) else None
            lines.append(f"  {i + 1:>5} {_fmt(tl):>11} {_fmt(vl):>9}")
    if run:
        precision = run.get("precision") or {}
        lines += [
            "",
            "Training:",
            f"  {run.get('epochs_run')} epochs, {run.get('global_steps')} optimiser steps, "
            f"{run.get('train_samples_per_s')} samples/s, "
            f"{run.get('wall_time_s')} s wall",
            f"  device {run.get('device')}, precision {precision.get('effective')} (requested "
            f"{precision.get('requested')}), "
            f"seed {run.get('seed')}, deterministic {run.get('deterministic')}",
            f"  data: train {(run.get('data_sizes') or {}).get('train')}, val "
            f"{(run.get('data_sizes') or {}).get('val')}, "
            f"test {(run.get('data_sizes') or {}).get('test')}",
        ]
        if run.get("resumed_from"):
            lines.append(f"  resumed from {run['resumed_from']}")
        lines += [
            "",
            "Files (in the run directory):",
            "  metrics.json (every number, with history), checkpoints/, model/, emotrain.log,",
            "  report/report.html (this summary with the plots), report/*.png, report/report.json",
        ]
    elif extra:
        scalars = {
            k: v for k, v in flatten_config(extra).items() if isinstance(v, (int, float, str, bool)) or v is None
        }
        if scalars:
            lines += ["", "Extra:"] + [
                f"  {k}: {_fmt(v) if isinstance(v, float) else _hp(v)}" for k, v in scalars.items()
            ]
    lines += ["", "Configuration:"]
    lines += [f"  {k}: {_hp(v)}" for k, v in flatten_config(hyperparameters).items()] or ["  (none)"]
    if run:
        versions = run.get("versions") or {}
        git = run.get("git") or {}
        lines += [
            "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v is not None and k != "platform"),
            f"Git: {git.get('commit') or 'n/a'}{' (uncommitted changes)' if git.get('dirty') else ''}; platform "
            f"{versions.get('platform')}",
        ]
    return "\n".join(lines) + "\n"


def val_metrics_at(epoch: int, val_metrics, run) -> dict:
    """The validation metrics of the kept epoch: the run's best_val, else the epoch's entry of `val_metrics`."""
    if run:
        return dict(run.get("best_val") or {})
    val_metrics = list(val_metrics or [])
    return dict(val_metrics[epoch - 1] or {}) if 1 <= epoch <= len(val_metrics) else {}


# --------------------------------------------------------------------------- entry point


def generate_training_report(
    train_losses,
    val_losses,
    train_metrics,
    val_metrics,
    hyperparameters,
    output_dir,
    prefix="emotrain",
    *,
    per_class=None,
    confusion=None,
    extra=None,
    best=None,
    run=None,
    errors=None,
) -> dict[str, Path]:
    """Write loss_curves.png, metrics_curves.png, report.json, summary.txt, report.html (and per-class / confusion
    figures) into `output_dir`.

    Lists are per epoch (epoch 1 first); metrics dicts use flat keys ("loss", "macro_f1", "emotion/macro_f1", ...).
    per_class: {task: {label: {precision, recall, f1, support}}}; confusion: {task: {"labels", "y_true", "y_pred"}}.
    best: {"epoch", "metric", "mode", "value"}: the kept epoch and what chose it (default: the lowest val loss);
    every output names this one. run: the run's metrics.json dict, for the summary's answer-first layout and the HTML.
    errors: {task: {worst_labels, confusions}} of the test predictions (emotrain.inference.predictions.error_analysis).
    Returns {file stem: path}.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_losses = list(train_losses or [])
    val_losses = list(val_losses or [])
    train_metrics = [dict(d or {}) for d in (train_metrics or [])]
    val_metrics = [dict(d or {}) for d in (val_metrics or [])]
    best = dict(best) if best else default_best(val_losses)
    files: dict[str, Path] = {}

    files["loss_curves"] = plot_loss_curves(
        train_losses,
        val_losses,
        val_metrics,
        out / "loss_curves.png",
        f"{prefix}: loss per epoch (train and validation splits)",
        best,
    )
    split = "train and validation splits" if any(train_metrics) else "validation split"
    files["metrics_curves"] = plot_metric_curves(
        train_metrics, val_metrics, out / "metrics_curves.png", f"{prefix}: metrics per epoch ({split})", best
    )

    multilabel = {t["name"] for t in (run or {}).get("tasks") or [] if t.get("multilabel")}
    for task, table in (per_class or {}).items():
        if table:
            how = ", at its per-label thresholds" if task in multilabel else ""
            files[f"per_class_f1_{task}"] = plot_per_class_f1(
                task,
                table,
                out / f"per_class_f1_{task}.png",
                f"{prefix}: per-class F1 - {task} (test split, kept model{how})",
            )
    confusion_json = {}
    for task, spec in (confusion or {}).items():
        try:
            labels, counts = confusion_counts(spec)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("no confusion matrix for task %s: %s", task, e)
            continue
        confusion_json[task] = {"labels": labels, "matrix": counts.tolist(), "rows": "true", "columns": "predicted"}
        files[f"confusion_matrix_{task}"] = plot_confusion(
            task,
            labels,
            counts,
            out / f"confusion_matrix_{task}.png",
            f"{prefix}: confusion matrix - {task} (test split, row-normalised)",
        )

    final_metrics = val_metrics[-1] if val_metrics else {}
    epoch = best.get("epoch")
    summary = format_summary(
        hyperparameters, train_losses, val_losses, val_metrics, extra, best=best, run=run, errors=errors
    )
    files["summary"] = atomic_write(out / "summary.txt", lambda fh: fh.write(summary))
    files["report"] = out / "report.json"
    files["html"] = out / "report.html"
    report = {
        "prefix": prefix,
        "generated_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "epochs": max(len(train_losses), len(val_losses)),
        "best": best,  # the kept epoch and the metric / mode that chose it (the same as metrics.json's)
        "best_epoch": epoch,
        "val_loss_at_best_epoch": val_losses[epoch - 1]
        if epoch is not None and 1 <= epoch <= len(val_losses)
        else None,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_val_loss": val_losses[-1] if val_losses else None,
        "train_losses": train_losses,
        "val_losses": val_losses,
        "train_metrics": train_metrics,
        "val_metrics": val_metrics,
        "final_val_metrics": final_metrics,
        "per_class": per_class or {},
        "confusion": confusion_json,
        "errors": errors or {},
        "hyperparameters": hyperparameters if hyperparameters is not None else {},
        "extra": extra or {},
        "files": {k: p.name for k, p in files.items()},
    }
    report = json_safe(report)
    from emotrain.reports_html import run_report_html

    page = run_report_html(report, summary, out, run=json_safe(run) if run else None)
    atomic_write(files["html"], lambda fh: fh.write(page))
    write_json(files["report"], report)
    log.info("wrote training report to %s", out, extra=FILE_ONLY)
    return files


def write_run_report(
    results: dict, output_dir, prefix: str, *, per_class=None, confusion=None, errors=None
) -> dict[str, Path]:
    """The report of a training run from its metrics.json dict: the epoch-end evaluations of its history."""
    epochs = [h for h in results["history"] if h.get("epoch_done", True)]
    return generate_training_report(
        train_losses=[h["train_loss"] for h in epochs],
        val_losses=[h["val"]["loss"] for h in epochs],
        train_metrics=None,
        val_metrics=[h["val"] for h in epochs],
        hyperparameters=results["config"],
        output_dir=output_dir,
        prefix=prefix,
        per_class=per_class or None,
        confusion=confusion or None,
        best=results["best"],
        run=results,
        errors=errors,
    )
