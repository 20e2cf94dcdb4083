"""GoEmotions (paper splits) -> DataBundle with up to three multi-label tasks.

`data.dir` holds train.tsv, dev.tsv, test.tsv (tab-separated, no header: text, comma-
separated label ids, comment id) and labels.txt (one name per line, id order). All
three tasks come from the one label-id column:

- ``emotion``: the 28 labels of labels.txt;
- ``ekman``: anger, disgust, fear, joy, sadness, surprise, neutral;
- ``sentiment``: positive, negative, ambiguous, neutral.

The coarse tasks use the paper's groupings, shipped as JSON in
``resources/goemotions/{ekman,sentiment}_mapping.json`` (coarse label -> fine labels;
key order is the label order). A comment has a coarse label when any of its fine
labels maps to it, so the coarse targets are multi-hot too.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np

from emotrain.data.readers import RawTable, cell_repr, check_file, read_delimited, read_text
from emotrain.data.types import DataBundle, Split, TaskSpec
from emotrain.errors import DataError

GOEMOTIONS_TASKS = ("emotion", "ekman", "sentiment")
SPLIT_FILES = {"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"}
LABELS_FILE = "labels.txt"
_RESOURCES = Path(__file__).resolve().parent / "resources" / "goemotions"
_ENCODING_HINT = "GoEmotions files are UTF-8; re-download or re-export the file"
_COLUMNS = "text, label ids, comment id"


@cache
def load_mapping(task: str) -> dict[str, tuple[str, ...]]:
    """The packaged coarse-label mapping for `task` ("ekman" or "sentiment")."""
    with open(_RESOURCES / f"{task}_mapping.json", encoding="utf-8") as f:
        raw = json.load(f)
    return {coarse: tuple(fine) for coarse, fine in raw.items()}


def ekman_labels() -> tuple[str, ...]:
    return tuple(load_mapping("ekman"))


def sentiment_labels() -> tuple[str, ...]:
    return tuple(load_mapping("sentiment"))


def read_labels(path: Path) -> tuple[str, ...]:
    """labels.txt: one name per line, in id order."""
    text = read_text(path, "utf-8", key="data.dir", encoding_hint=_ENCODING_HINT)
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:  # trailing blank lines
        names.pop()
    for lineno, name in enumerate(names, start=1):
        if not name:
            raise DataError(f"{path} line {lineno}: empty label name; labels.txt needs one name per line")
        if name in names[: lineno - 1]:
            raise DataError(f"{path} line {lineno}: label {name!r} is listed twice; each name must be unique")
    if not names:
        raise DataError(f"{path} is empty; it must list the label names, one per line")
    return tuple(names)


def read_split(path: Path, num_labels: int) -> tuple[list[str], np.ndarray, RawTable]:
    """One GoEmotions TSV -> texts, float32 multi-hot [n, num_labels], and the raw table."""
    # No quote processing: texts often start with or contain '"'.
    table = read_delimited(
        path,
        sep="\t",
        quoting=False,
        header=False,
        key="data.dir",
        encoding_hint=_ENCODING_HINT,
        expected_columns=3,
        layout=f"tab-separated: {_COLUMNS}",
    )
    texts = table.column("0", "text")
    cells = table.column("1", "label ids")
    rows: list[int] = []
    cols: list[int] = []
    for i, (text, cell) in enumerate(zip(texts, cells)):
        if not text.strip():
            raise DataError(f"{table.where(i)}: empty text; fill it in or remove that line")
        parts = cell.split(",")
        try:
            ids = [int(p) for p in parts]
        except ValueError:
            raise DataError(
                f"{table.where(i)}: label ids {cell_repr(cell)} are not comma-separated integers; expected columns: "
                f"{_COLUMNS}"
            ) from None
        for label_id in ids:
            if not 0 <= label_id < num_labels:
                raise DataError(
                    f"{table.where(i)}: label id {label_id} is out of range 0..{num_labels - 1} "
                    f"({num_labels} names in {LABELS_FILE}); fix the id or labels.txt"
                )
        rows.extend([i] * len(ids))
        cols.extend(ids)
    multi_hot = np.zeros((len(table), num_labels), dtype=np.float32)
    multi_hot[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1.0
    return list(texts), multi_hot, table


def mapping_matrix(fine_labels: Sequence[str], task: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(coarse labels, 0/1 float32 matrix [len(fine_labels), len(coarse)]) for a coarse task."""
    mapping = load_mapping(task)
    coarse = tuple(mapping)
    index = {name: i for i, name in enumerate(fine_labels)}
    matrix = np.zeros((len(fine_labels), len(coarse)), dtype=np.float32)
    for j, group in enumerate(coarse):
        for fine in mapping[group]:
            if fine not in index:
                raise DataError(
                    f"the {task} mapping uses label {fine!r}, which {LABELS_FILE} does not list; "
                    f"use the original labels.txt or data.tasks=[emotion]"
                )
            matrix[index[fine], j] = 1.0
    unmapped = [fine_labels[i] for i in np.flatnonzero(matrix.sum(axis=1) == 0)]
    if unmapped:
        raise DataError(
            f"{LABELS_FILE} label {unmapped[0]!r} has no {task} group; use the original labels.txt or "
            "data.tasks=[emotion]"
        )
    return coarse, matrix


def check_tasks(tasks: Sequence[str] | str | None) -> list[str]:
    """data.tasks for GoEmotions: a non-empty subset of emotion, ekman, sentiment."""
    if tasks is None or isinstance(tasks, str):
        tasks = [] if tasks is None else [tasks]
    names = [str(t) for t in tasks]
    valid = ", ".join(GOEMOTIONS_TASKS)
    if not names:
        raise DataError(f"data.tasks is empty; choose one or more of {valid}")
    for i, name in enumerate(names):
        if name not in GOEMOTIONS_TASKS:
            raise DataError(f"data.tasks: unknown GoEmotions task {name!r}; valid tasks: {valid}")
        if name in names[:i]:
            raise DataError(f"data.tasks lists {name!r} twice; list each task once")
    return names


def load_goemotions(data_dir: Path, tasks: Sequence[str] = GOEMOTIONS_TASKS) -> DataBundle:
    """Read a GoEmotions directory; `tasks` picks which of emotion / ekman / sentiment to build."""
    names = check_tasks(tasks)
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"GoEmotions directory {data_dir} does not exist; set data.dir to the folder holding "
            f"{', '.join(SPLIT_FILES.values())} and {LABELS_FILE}"
        )
    for filename in (LABELS_FILE, *SPLIT_FILES.values()):
        check_file(data_dir / filename, "data.dir")
    fine_labels = read_labels(data_dir / LABELS_FILE)

    coarse = {task: mapping_matrix(fine_labels, task) for task in names if task != "emotion"}
    specs = []
    for task in names:
        labels = fine_labels if task == "emotion" else coarse[task][0]
        specs.append(TaskSpec(name=task, labels=labels, multilabel=True))

    splits: dict[str, Split] = {}
    for split, filename in SPLIT_FILES.items():
        texts, emotion, table = read_split(data_dir / filename, len(fine_labels))
        targets: dict[str, np.ndarray] = {}
        for task in names:
            if task == "emotion":
                targets[task] = emotion
            else:
                targets[task] = (emotion @ coarse[task][1] > 0).astype(np.float32)
        splits[split] = Split(texts=texts, targets=targets, name=split, ids=table.column("2", "comment id"))

    return DataBundle(
        tasks=specs,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        primary_task=names[0],
        sources={split: str(data_dir / filename) for split, filename in SPLIT_FILES.items()},
    )


__all__ = [
    "GOEMOTIONS_TASKS",
    "check_tasks",
    "ekman_labels",
    "load_goemotions",
    "load_mapping",
    "mapping_matrix",
    "read_labels",
    "read_split",
    "sentiment_labels",
]
