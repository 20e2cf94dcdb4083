"""Training report: loss/metric curves, per-class F1 bars, confusion matrices, report.json and summary.txt.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas: no display is
needed, pyplot's global figure registry is never touched (nothing to leak), and a caller's
interactive backend is left alone. Every file is written atomically.
"""

from __future__ import annotations

import datetime as _dt
import enum
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
from emotrain.io import atomic_write, finite_or_none, write_json  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["flatten_config", "generate_training_report"]

DPI = 120
OVERALL = "overall"


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


def _plain(obj):
    """JSON-ready copy: containers to dict/list, numpy/torch scalars and arrays to Python, non-finite to None."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True, enum_to_str=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _plain(obj.tolist())
    if isinstance(obj, enum.Enum):
        return _plain(obj.value)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    return str(obj)


def flatten_config(cfg, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    cfg = _plain(cfg) if cfg is not None else {}
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


def _epoch_axis(ax, n_epochs: int) -> None:
    ax.set_xlabel("Epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if n_epochs >= 1:
        ax.set_xlim(0.75, max(n_epochs, 1) + 0.25)
    ax.grid(True, alpha=0.3)


def _best(val_losses) -> tuple[int | None, float | None]:
    """1-based epoch of the lowest finite validation loss (first one on ties) and that loss."""
    best_epoch, best = None, None
    for i, v in enumerate(val_losses or [], start=1):
        v = finite_or_none(v)
        if v is not None and (best is None or v < best):
            best_epoch, best = i, v
    return best_epoch, best


def _group_metrics(dicts_list) -> dict[str, list[str]]:
    """{task or "overall": [metric keys]} for every non-loss key seen, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for d in dicts_list:
        for key in (d or {}):
            task, _, metric = key.rpartition("/")
            if key == "loss" or key.endswith("/loss"):
                continue
            group = groups.setdefault(task or OVERALL, [])
            if key not in group:
                group.append(key)
    if OVERALL in groups:  # overall last
        groups[OVERALL] = groups.pop(OVERALL)
    return groups


# --------------------------------------------------------------------------- figures


def plot_loss_curves(train_losses, val_losses, val_metrics, path: Path, title: str) -> Path:
    n = max(len(train_losses or []), len(val_losses or []), 1)
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    xs, ys = _series(train_losses)
    if xs:
        ax.plot(xs, ys, "o-", color="tab:blue", lw=2, label="train loss")
    xs, ys = _series(val_losses)
    if xs:
        ax.plot(xs, ys, "s-", color="tab:orange", lw=2, label="validation loss")
    task_keys = []
    for d in val_metrics or []:
        for k in (d or {}):
            if k.endswith("/loss") and k not in task_keys:
                task_keys.append(k)
    for k in task_keys:
        xs, ys = _series(val_metrics, k)
        if xs:
            ax.plot(xs, ys, ":", marker=".", lw=1.2, alpha=0.8, label=f"validation {k}")
    best_epoch, best = _best(val_losses)
    if best_epoch is not None:
        ax.axvline(best_epoch, color="grey", ls="--", lw=1)
        ax.plot([best_epoch], [best], "*", color="tab:red", ms=14, label=f"best: epoch {best_epoch} ({best:.4f})", zorder=5)
    if not ax.lines:
        ax.text(0.5, 0.5, "no losses recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title)
    ax.set_ylabel("Loss")
    _epoch_axis(ax, n)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize=9)
    return _save_figure(fig, path)


def plot_metric_curves(train_metrics, val_metrics, path: Path, title: str) -> Path:
    train_metrics = list(train_metrics or [])
    val_metrics = list(val_metrics or [])
    n = max(len(train_metrics), len(val_metrics), 1)
    groups = _group_metrics(val_metrics + train_metrics)
    ncols = min(2, max(len(groups), 1))
    nrows = max(1, math.ceil(len(groups) / ncols))
    fig = Figure(figsize=(6.5 * ncols, 4.2 * nrows), layout="constrained")
    fig.suptitle(title, fontsize=13)
    if not groups:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no metrics recorded", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return _save_figure(fig, path)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (group, keys) in zip(axes, groups.items()):
        lo, hi = math.inf, -math.inf
        for i, key in enumerate(keys):
            color = colors[i % len(colors)]
            name = key.rpartition("/")[2]
            for data, style, label in ((val_metrics, "o-", f"val {name}"), (train_metrics, "x--", f"train {name}")):
                xs, ys = _series(data, key)
                if xs:
                    ax.plot(xs, ys, style, color=color, lw=1.8 if style == "o-" else 1.2, label=label)
                    lo, hi = min(lo, *ys), max(hi, *ys)
        ax.set_title(f"{group}" if group == OVERALL else f"task: {group}")
        ax.set_ylabel("Score")
        if 0.0 <= lo and hi <= 1.0:
            ax.set_ylim(-0.02, 1.02)
        _epoch_axis(ax, n)
        handles = ax.get_legend_handles_labels()[0]
        if handles:  # below the plot: never hides a curve
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(len(handles), 3), fontsize=8, frameon=False)
    for ax in axes[len(groups):]:
        ax.set_axis_off()
    return _save_figure(fig, path)


def plot_per_class_f1(task: str, table: Mapping, path: Path, title: str) -> Path:
    """Horizontal F1 bars, best at the top, each annotated with F1 and support; height grows with the labels."""
    rows = [(str(label), finite_or_none((m or {}).get("f1")) or 0.0, (m or {}).get("support")) for label, m in table.items()]
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
        ax.text(v + 0.01, yi, f"{v:.2f}{s}", va="center", fontsize=8, zorder=4,
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.6})
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
        raise ValueError(f"y_true/y_pred must be 1-D and of equal length (got {y_true.shape} and {y_pred.shape}); multi-label tasks have no confusion matrix")
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
                ax.text(j, i, f"{counts[i, j]}\n{norm[i, j]:.0%}", ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    return _save_figure(fig, path)


# --------------------------------------------------------------------------- summary


def format_summary(hyperparameters, train_losses, val_losses, final_metrics, extra=None) -> str:
    flat = flatten_config(hyperparameters)
    best_epoch, best = _best(val_losses)
    n = max(len(train_losses or []), len(val_losses or []))
    lines = ["TRAINING SUMMARY", "================", "Hyperparameters:"]
    lines += [f"  {k}: {_hp(v)}" for k, v in flat.items()] or ["  (none)"]
    lines += [
        "",
        "Training:",
        f"  Total epochs: {n}",
        f"  Final training loss: {_fmt(train_losses[-1] if train_losses else None)}",
        f"  Final validation loss: {_fmt(val_losses[-1] if val_losses else None)}",
        f"  Best validation loss: {_fmt(best)}",
        f"  Best epoch: {best_epoch if best_epoch is not None else 'n/a'}",
        "",
        "Final validation metrics:",
    ]
    lines += [f"  {k}: {_fmt(v)}" for k, v in (final_metrics or {}).items()] or ["  (none)"]
    scalars = {k: v for k, v in flatten_config(extra).items() if isinstance(v, (int, float, str, bool)) or v is None} if extra else {}
    if scalars:
        lines += ["", "Extra:"] + [f"  {k}: {_fmt(v) if isinstance(v, float) else _hp(v)}" for k, v in scalars.items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- entry point


def generate_training_report(train_losses, val_losses, train_metrics, val_metrics, hyperparameters, output_dir, prefix="emotrain", *, per_class=None, confusion=None, extra=None) -> dict[str, Path]:
    """Write loss_curves.png, metrics_curves.png, report.json, summary.txt (and per-class / confusion figures) into `output_dir`.

    Lists are per epoch (epoch 1 first); metrics dicts use flat keys ("loss", "macro_f1", "emotion/macro_f1", ...).
    per_class: {task: {label: {precision, recall, f1, support}}}; confusion: {task: {"labels", "y_true", "y_pred"}}.
    Returns {file stem: path}.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_losses = list(train_losses or [])
    val_losses = list(val_losses or [])
    train_metrics = [dict(d or {}) for d in (train_metrics or [])]
    val_metrics = [dict(d or {}) for d in (val_metrics or [])]
    files: dict[str, Path] = {}

    files["loss_curves"] = plot_loss_curves(train_losses, val_losses, val_metrics, out / "loss_curves.png", f"{prefix}: training and validation loss")
    files["metrics_curves"] = plot_metric_curves(train_metrics, val_metrics, out / "metrics_curves.png", f"{prefix}: metrics per epoch (solid: validation, dashed: training)")

    for task, table in (per_class or {}).items():
        if table:
            files[f"per_class_f1_{task}"] = plot_per_class_f1(task, table, out / f"per_class_f1_{task}.png", f"{prefix}: per-class F1 - {task}")
    confusion_json = {}
    for task, spec in (confusion or {}).items():
        try:
            labels, counts = confusion_counts(spec)
        except (ValueError, KeyError, TypeError) as e:
            log.warning("no confusion matrix for task %s: %s", task, e)
            continue
        confusion_json[task] = {"labels": labels, "matrix": counts.tolist(), "rows": "true", "columns": "predicted"}
        files[f"confusion_matrix_{task}"] = plot_confusion(task, labels, counts, out / f"confusion_matrix_{task}.png", f"{prefix}: confusion matrix - {task} (row-normalised)")

    best_epoch, best = _best(val_losses)
    final_metrics = val_metrics[-1] if val_metrics else {}
    summary = format_summary(hyperparameters, train_losses, val_losses, final_metrics, extra)
    files["summary"] = atomic_write(out / "summary.txt", lambda fh: fh.write(summary))
    files["report"] = out / "report.json"
    report = {
        "prefix": prefix,
        "generated_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "epochs": max(len(train_losses), len(val_losses)),
        "best_epoch": best_epoch,
        "best_val_loss": best,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_val_loss": val_losses[-1] if val_losses else None,
        "train_losses": train_losses,
        "val_losses": val_losses,
        "train_metrics": train_metrics,
        "val_metrics": val_metrics,
        "final_val_metrics": final_metrics,
        "per_class": per_class or {},
        "confusion": confusion_json,
        "hyperparameters": hyperparameters if hyperparameters is not None else {},
        "extra": extra or {},
        "files": {k: p.name for k, p in files.items()},
    }
    write_json(files["report"], _plain(report))
    log.info("wrote training report to %s", out)
    return files
