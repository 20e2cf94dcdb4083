"""Plain containers passed from the data layer to training (numpy only, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TaskSpec:
    """One prediction head: its label names (in id order) and whether it is multi-label."""

    name: str
    labels: tuple[str, ...]
    multilabel: bool

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict:
        return {"name": self.name, "labels": list(self.labels), "multilabel": self.multilabel}

    @classmethod
    def from_dict(cls, d: dict) -> TaskSpec:
        """From `to_dict()` output (checkpoints, bundles); ValueError naming what is wrong."""
        if not isinstance(d, dict):
            raise ValueError(f"a task must be an object, got {type(d).__name__}")
        labels = d.get("labels")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
            raise ValueError(f"task {d.get('name')!r}: labels must be a non-empty list of strings")
        if len(set(labels)) != len(labels):
            raise ValueError(f"task {d.get('name')!r}: duplicate label names")
        name, multilabel = d["name"], d["multilabel"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"task name {name!r} must be a non-empty string")
        if not isinstance(multilabel, bool):  # "yes" or 1 would silently turn argmax into thresholds
            raise ValueError(f"task {name!r}: multilabel {multilabel!r} must be true or false")
        return cls(name=name, labels=tuple(labels), multilabel=multilabel)


@dataclass
class Split:
    """Texts and their targets for every task.

    targets[task] is int64 of shape [n] (class ids) for a multi-class task and
    float32 of shape [n, num_labels] (multi-hot) for a multi-label task.
    """

    texts: list[str]
    targets: dict[str, np.ndarray]
    name: str = ""
    # Where each row came from ("test.tsv:12", a GoEmotions comment id), for predictions files; None: unknown.
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def row_id(self, i: int) -> str:
        return self.ids[i] if self.ids is not None else f"{self.name or 'row'}:{i}"

    def subset(self, indices) -> Split:
        idx = np.asarray(indices, dtype=np.int64)
        return Split(
            texts=[self.texts[i] for i in idx],
            targets={k: v[idx] for k, v in self.targets.items()},
            name=self.name,
            ids=None if self.ids is None else [self.ids[i] for i in idx],
        )


@dataclass
class DataBundle:
    tasks: list[TaskSpec]
    train: Split
    val: Split
    test: Split | None
    primary_task: str = ""
    # Where each split came from, for reports (file paths or "package:sample").
    sources: dict[str, str] = field(default_factory=dict)

    def task(self, name: str) -> TaskSpec:
        for t in self.tasks:
            if t.name == name:
                return t
        raise KeyError(name)
