"""The built-in sample data set: three CSVs shipped in the package -> DataBundle.

Files: ``resources/sample/{train,val,test}.csv`` with header ``text,emotion``; the
splits are fixed (one file each). Two multi-class tasks:

- ``emotion``: anger, disgust, fear, joy, sadness, surprise, neutral (this order);
- ``sentiment``, derived from the emotion: joy -> positive; anger, disgust, fear,
  sadness -> negative; surprise -> ambiguous; neutral -> neutral. Label order
  positive, negative, ambiguous, neutral (the same order as GoEmotions' sentiment task).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from emotrain.data.labels import TaskOptions, build_task, text_cells
from emotrain.data.readers import read_delimited
from emotrain.data.types import DataBundle, Split, TaskSpec
from emotrain.errors import DataError

SAMPLE_DIR = Path(__file__).resolve().parent / "resources" / "sample"
SAMPLE_FILES = {"train": "train.csv", "val": "val.csv", "test": "test.csv"}
EMOTION_LABELS = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
SENTIMENT_LABELS = ("positive", "negative", "ambiguous", "neutral")
EMOTION_TO_SENTIMENT = {
    "anger": "negative",
    "disgust": "negative",
    "fear": "negative",
    "joy": "positive",
    "sadness": "negative",
    "surprise": "ambiguous",
    "neutral": "neutral",
}


def load_sample(data_dir: Path | None = None) -> DataBundle:
    """Load the packaged sample CSVs (or the same three files from `data_dir`, for tests)."""
    directory = Path(data_dir) if data_dir is not None else SAMPLE_DIR
    for name in SAMPLE_FILES.values():
        if not (directory / name).is_file():
            fix = "reinstall emotrain (the sample ships inside the package)" if data_dir is None else "add it"
            raise DataError(
                f"sample data file {directory / name} is missing; {fix}, or use data=table with your own files"
            )
    tables = {
        split: read_delimited(directory / name, sep=",", quoting=True, header=True, key="the sample data")
        for split, name in SAMPLE_FILES.items()
    }
    texts = {split: text_cells(table, "text") for split, table in tables.items()}
    emotion_opts = TaskOptions(
        name="emotion", column="emotion", labels=EMOTION_LABELS, labels_origin="the sample's emotions"
    )
    emotion_spec, emotion = build_task(emotion_opts, tables)

    # class id -> sentiment id, applied to every split at once
    to_sentiment = np.array([SENTIMENT_LABELS.index(EMOTION_TO_SENTIMENT[e]) for e in EMOTION_LABELS], dtype=np.int64)
    sentiment_spec = TaskSpec(name="sentiment", labels=SENTIMENT_LABELS, multilabel=False)
    splits = {
        split: Split(
            texts=texts[split],
            targets={"emotion": emotion[split], "sentiment": to_sentiment[emotion[split]]},
            name=split,
            ids=tables[split].row_ids(),
        )
        for split in SAMPLE_FILES
    }
    in_package = data_dir is None
    return DataBundle(
        tasks=[emotion_spec, sentiment_spec],
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        primary_task="emotion",
        sources={
            split: (f"package:sample/{name}" if in_package else str(directory / name))
            for split, name in SAMPLE_FILES.items()
        },
    )


__all__ = ["EMOTION_LABELS", "EMOTION_TO_SENTIMENT", "SAMPLE_DIR", "SENTIMENT_LABELS", "load_sample"]
