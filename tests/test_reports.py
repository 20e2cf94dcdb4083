"""Training report: files, numbers, summary layout, images."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from emotrain.reports import flatten_config, generate_training_report, loss_curves_figure, metric_curves_figure

GOEMO = [
    "admiration",
    "amusement",
    "anger",
    "annoyance",
    "approval",
    "caring",
    "confusion",
    "curiosity",
    "desire",
    "disappointment",
    "disapproval",
    "disgust",
    "embarrassment",
    "excitement",
    "fear",
    "gratitude",
    "grief",
    "joy",
    "love",
    "nervousness",
    "optimism",
    "pride",
    "realization",
    "relief",
    "remorse",
    "sadness",
    "surprise",
    "neutral",
]
SENTIMENT = ["negative", "neutral", "positive"]
HPARAMS = {
    "seed": 42,
    "optim": {"lr": 2e-5, "weight_decay": 0.01},
    "trainer": {"epochs": 3, "batch_size": 32, "early_stopping": {"patience": None}},
    "data": {"kind": "goemotions", "preprocess": {"lowercase": True}},
}
TRAIN_LOSSES = [1.5, 0.9, 0.61234]
VAL_LOSSES = [1.2, 0.83456, 0.9]  # best at epoch 2


def synthetic(seed=0):
    rng = np.random.default_rng(seed)
    val_metrics = []
    for e, loss in enumerate(VAL_LOSSES):
        val_metrics.append(
            {
                "loss": loss,
                "emotion/loss": loss * 0.7,
                "emotion/macro_f1": 0.2 + 0.1 * e,
                "emotion/micro_f1": 0.3 + 0.1 * e,
                "emotion/subset_accuracy": 0.25 + 0.05 * e,
                "sentiment/loss": loss * 0.3,
                "sentiment/macro_f1": 0.5 + 0.1 * e,
                "sentiment/micro_f1": 0.55 + 0.1 * e,
                "sentiment/accuracy": 0.6 + 0.05 * e,
                "macro_f1": 0.35 + 0.1 * e,
            }
        )
    per_class = {
        "emotion": {
            lab: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for lab, p, r, f, s in zip(GOEMO, rng.random(28), rng.random(28), rng.random(28), rng.integers(1, 500, 28))
        },
        "sentiment": {
            lab: {"precision": 0.7, "recall": 0.6, "f1": 0.65 + 0.05 * i, "support": 100 + i}
            for i, lab in enumerate(SENTIMENT)
        },
    }
    y_true = rng.integers(0, 3, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 3, 300))
    yt28 = rng.integers(0, 28, 1000)
    yp28 = np.where(rng.random(1000) < 0.5, yt28, rng.integers(0, 28, 1000))
    confusion = {
        "sentiment": {"labels": SENTIMENT, "y_true": y_true.tolist(), "y_pred": y_pred.tolist()},
        "emotion": {"labels": GOEMO, "y_true": yt28, "y_pred": yp28},
    }
    return val_metrics, per_class, confusion


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "report"
    val_metrics, per_class, confusion = synthetic()
    files = generate_training_report(
        TRAIN_LOSSES,
        VAL_LOSSES,
        [{}, {}, {}],
        val_metrics,
        HPARAMS,
        out,
        per_class=per_class,
        confusion=confusion,
        extra={"test": {"loss": 0.95}, "wall_time_s": 12.5},
    )
    return out, files, val_metrics, per_class


def test_files_exist(report):
    out, files, _, _ = report
    expected = {
        "loss_curves.png",
        "metrics_curves.png",
        "report.json",
        "summary.txt",
        "report.html",
        "per_class_f1_emotion.png",
        "per_class_f1_sentiment.png",
        "confusion_matrix_sentiment.png",
        "confusion_matrix_emotion.png",
    }
    assert {p.name for p in files.values()} == expected
    assert {p.name for p in out.iterdir()} == expected  # no temp files left
    assert all(p.parent == out and p.stat().st_size > 0 for p in files.values())


def test_report_json_round_trips_the_numbers(report):
    out, _, val_metrics, per_class = report
    data = json.loads((out / "report.json").read_text())
    assert data["train_losses"] == TRAIN_LOSSES
    assert data["val_losses"] == VAL_LOSSES
    assert data["val_metrics"] == val_metrics
    assert data["train_metrics"] == [{}, {}, {}]
    assert data["per_class"] == per_class
    assert data["hyperparameters"] == HPARAMS
    assert data["extra"] == {"test": {"loss": 0.95}, "wall_time_s": 12.5}
    assert data["best_epoch"] == 2 and data["val_loss_at_best_epoch"] == 0.83456
    assert data["best"] == {
        "epoch": 2,
        "metric": "loss",
        "mode": "min",
        "value": 0.83456,
    }  # no monitor given: the lowest val loss
    cm = np.array(data["confusion"]["sentiment"]["matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 300
    assert np.array(data["confusion"]["emotion"]["matrix"]).shape == (28, 28)


def test_summary_layout(report):
    """Answer first (the kept epoch and why), then per epoch, then the configuration; every fact once."""
    out, _, val_metrics, _ = report
    lines = (out / "summary.txt").read_text().splitlines()
    assert lines[:3] == [
        "EMOTRAIN RUN SUMMARY",
        "====================",
        "Kept model: epoch 2 (by val loss, min = 0.8346), of 3 epochs",
    ]
    i = lines.index("Per epoch:")
    assert lines[i + 1].split() == ["epoch", "train", "loss", "val", "loss"]
    assert lines[i + 2].split() == ["1", "1.5000", "1.2000"] and lines[i + 4].split() == ["3", "0.6123", "0.9000"]
    config = lines.index("Configuration:")
    assert config > i and lines.index("Extra:") < config  # the configuration comes last
    for line in (
        "  seed: 42",
        "  optim.lr: 2e-05",
        "  trainer.early_stopping.patience: null",
        "  data.preprocess.lowercase: True",
    ):
        assert line in lines[config:], line
    assert "  test.loss: 0.9500" in lines[lines.index("Extra:") : config]
    v = lines.index("Validation at the kept epoch (loss 0.8346, macro_f1 0.4500):")
    assert "  emotion/macro_f1: 0.3000" in lines[v:i]  # epoch 2's values, not the last epoch's
    assert len(lines) == len(set(line for line in lines if line.strip())) + lines.count("")  # no line twice


def test_best_is_the_monitored_epoch_everywhere(tmp_path):
    """With a monitor other than the loss, the star, report.json and summary.txt name the monitor's epoch."""
    val_metrics, _, _ = synthetic()
    best = {"epoch": 3, "metric": "emotion/macro_f1", "mode": "max", "value": 0.4}
    out = tmp_path / "r"
    generate_training_report(TRAIN_LOSSES, VAL_LOSSES, None, val_metrics, HPARAMS, out, best=best)
    data = json.loads((out / "report.json").read_text())
    assert (
        data["best"] == best and data["best_epoch"] == 3 and data["val_loss_at_best_epoch"] == 0.9
    )  # not epoch 2, the lowest loss
    assert (
        "Kept model: epoch 3 (by val emotion/macro_f1, max = 0.4000), of 3 epochs" in (out / "summary.txt").read_text()
    )
    fig = loss_curves_figure(TRAIN_LOSSES, VAL_LOSSES, val_metrics, "t", best)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    star = [label for label in labels if label.startswith("kept:")]
    assert star == ["kept: epoch 3 (by val emotion/macro_f1, max = 0.4000)"]
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == star[0])
    assert list(line.get_xdata()) == [3] and list(line.get_ydata()) == [0.9]


def test_metric_curves_say_what_each_line_is(tmp_path):
    val_metrics, _, _ = synthetic()
    for d in val_metrics:  # a multi-label task tracked at 0.5 and at per-epoch tuned thresholds
        d["emotion/macro_f1_tuned"] = d["emotion/macro_f1"] + 0.2
    fig = metric_curves_figure(None, val_metrics, "metrics (validation split)", {"epoch": 2})
    titles = [ax.get_title() for ax in fig.axes if ax.axison]
    assert titles == [
        "task emotion (multi-label), validation split",
        "task sentiment (single-label), validation split",
        "macro-F1 of every task, validation split",
    ]
    emotion, sentiment, overall = (ax for ax in fig.axes if ax.axison)
    em = emotion.get_legend_handles_labels()[1]
    assert "macro-F1 at 0.5" in em and "macro-F1 at thresholds tuned per epoch" in em and "kept: epoch 2" in em
    se = sentiment.get_legend_handles_labels()[1]
    assert se == ["macro-F1", "accuracy (= micro-F1)", "kept: epoch 2"]  # micro-F1 equals accuracy: one line, said so
    styles = {(ln.get_linestyle(), ln.get_marker()) for ln in emotion.lines if not ln.get_label().startswith("kept")}
    assert len(styles) == len(
        [ln for ln in emotion.lines if not ln.get_label().startswith("kept")]
    )  # every series distinguishable
    assert "train" not in " ".join(em + se) and "dashed: training" not in fig._suptitle.get_text()
    assert overall.get_legend_handles_labels()[1][:3] == ["emotion (tuned thresholds)", "sentiment", "mean over tasks"]


def test_one_epoch_gets_one_integer_tick():
    val_metrics, _, _ = synthetic()
    fig = metric_curves_figure(None, val_metrics[:1], "t")
    ax = next(ax for ax in fig.axes if ax.axison)
    assert list(ax.get_xticks()) == [1]
    fig = loss_curves_figure([1.0], [1.0], None, "t")
    assert list(fig.axes[0].get_xticks()) == [1]


def _image(path):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img


def test_pngs_are_sensible_images(report):
    out, files, _, _ = report
    for path in files.values():
        if path.suffix != ".png":
            continue
        img = _image(path)
        h, w = img.shape[:2]
        assert 300 <= h <= 4000 and 400 <= w <= 4000, (path.name, img.shape)
        assert img[..., :3].std() > 0.05, f"{path.name} looks blank"
    # The 28-class chart is taller than the 3-class one: room for every label.
    assert _image(out / "per_class_f1_emotion.png").shape[0] > 2 * _image(out / "per_class_f1_sentiment.png").shape[0]


def test_no_pyplot_figures_left_open(report):
    import sys

    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []


def test_minimal_inputs_and_non_finite_values(tmp_path):
    files = generate_training_report([math.nan], [float("inf")], None, None, {}, tmp_path / "r")
    text = (tmp_path / "r" / "summary.txt").read_text()
    assert "Kept model: n/a" in text and "      1         n/a       n/a" in text and "  (none)" in text
    data = json.loads((tmp_path / "r" / "report.json").read_text())  # strict JSON: NaN/inf became null
    assert data["train_losses"] == [None] and data["val_losses"] == [None]
    assert {"loss_curves", "metrics_curves", "report", "summary", "html"} == set(files)


def test_atomic_write_keeps_previous_png_on_failure(tmp_path, monkeypatch):
    val_metrics, _, _ = synthetic()
    out = tmp_path / "r"
    generate_training_report(TRAIN_LOSSES, VAL_LOSSES, None, val_metrics, HPARAMS, out)
    before = (out / "loss_curves.png").read_bytes()
    from matplotlib.figure import Figure

    def boom(self, *a, **k):
        raise RuntimeError("render failed")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        generate_training_report([9.0], [9.0], None, None, HPARAMS, out)
    assert (out / "loss_curves.png").read_bytes() == before
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_flatten_config():
    assert flatten_config({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}
