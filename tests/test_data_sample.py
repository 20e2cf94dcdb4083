"""data=sample: the packaged CSVs (when present) and the loader on temporary copies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from emotrain.data.loading import load_data
from emotrain.data.sample import EMOTION_LABELS, EMOTION_TO_SENTIMENT, SAMPLE_DIR, SENTIMENT_LABELS, load_sample
from emotrain.errors import DataError

ROWS = {
    "train": [
        ("I love this", "joy"),
        ("How dare you", "anger"),
        ('Gross, "really" gross', "disgust"),
        ("I'm scared", "fear"),
        ("So sad today", "sadness"),
        ("Wow, what?", "surprise"),
        ("It is Tuesday", "neutral"),
    ],
    "val": [("Great news", "joy"), ("Ugh", "disgust")],
    "test": [("Oh no", "sadness"), ("Whoa", "surprise"), ("ok", "neutral")],
}


def write_sample(directory: Path, rows=ROWS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for split, items in rows.items():
        body = "text,emotion\n" + "".join('"{}",{}\n'.format(t.replace('"', '""'), e) for t, e in items)
        (directory / f"{split}.csv").write_text(body, encoding="utf-8")
    return directory


def test_tasks_and_label_order(tmp_path):
    b = load_sample(write_sample(tmp_path / "sample"))
    assert [t.to_dict() for t in b.tasks] == [
        {"name": "emotion", "labels": list(EMOTION_LABELS), "multilabel": False},
        {"name": "sentiment", "labels": ["positive", "negative", "ambiguous", "neutral"], "multilabel": False},
    ]
    assert EMOTION_LABELS == ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
    assert b.primary_task == "emotion"
    assert b.train.texts[2] == 'Gross, "really" gross'
    assert b.train.targets["emotion"].tolist() == [3, 0, 1, 2, 4, 5, 6]
    assert b.train.targets["sentiment"].tolist() == [0, 1, 1, 1, 1, 2, 3]
    assert (len(b.val), len(b.test)) == (2, 3) and b.test.name == "test"


def test_unknown_emotion_names_line(tmp_path):
    rows = dict(ROWS, val=[("fine", "joy"), ("hmm", "confusion")])
    with pytest.raises(DataError) as e:
        load_sample(write_sample(tmp_path / "sample", rows))
    msg = str(e.value)
    assert "val.csv line 3" in msg and "unknown label 'confusion'" in msg


def test_missing_file(tmp_path):
    directory = write_sample(tmp_path / "sample")
    (directory / "test.csv").unlink()
    with pytest.raises(DataError) as e:
        load_sample(directory)
    assert "test.csv is missing" in str(e.value)


needs_packaged = pytest.mark.skipif(
    not all((SAMPLE_DIR / f"{s}.csv").is_file() for s in ("train", "val", "test")),
    reason="packaged sample CSVs not written yet",
)


@needs_packaged
def test_packaged_sample_loads():
    b = load_data({"kind": "sample"}, Path.cwd())
    assert b.sources["train"] == "package:sample/train.csv"
    assert min(len(b.train), len(b.val), len(b.test)) > 0
    for split in (b.train, b.val, b.test):
        emotion, sentiment = split.targets["emotion"], split.targets["sentiment"]
        assert emotion.dtype == np.int64 and emotion.min() >= 0 and emotion.max() < 7
        expected = [SENTIMENT_LABELS.index(EMOTION_TO_SENTIMENT[EMOTION_LABELS[i]]) for i in emotion]
        assert sentiment.tolist() == expected
    assert set(b.train.targets["emotion"].tolist()) == set(range(7))  # every emotion is trained on
