"""Prediction records, defined once: what `emotrain-predict` prints and what a run writes for its test split.

One record per text (numpy only; the ONNX engine and training both build them)::

    {"id": "test.csv:12",                       # predictions_test.jsonl only: where the row came from
     "text": "...",                             # the text the model read (preprocessed: PII scrubbed)
     "gold": {"emotion": ["joy"], ...},         # predictions_test.jsonl only: the true labels per task
     "emotion": "joy",                          # the primary task's top label
     "tasks": {"emotion": {"label": "joy", "labels": ["joy"], "scores": {"anger": 0.01, ...}}, ...},
     "truncated": false}

`labels` is the decision (multi-label: every label at or over its threshold, best first; multi-class:
the top label), `scores` every label's probability in label order. `error_analysis` reads records
back and lists, per task, the labels with the lowest F1 and the most frequent confusions.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from emotrain.data.types import TaskSpec

PREDICTIONS_FILE = "predictions_test.jsonl"


def prediction_records(
    tasks: Sequence[TaskSpec],
    primary_task: str,
    probs: Mapping[str, np.ndarray],
    decisions: Mapping[str, np.ndarray],
    truncated: Sequence[bool],
) -> list[dict]:
    """One record per row of `probs` (see the module docstring); `decisions`: class ids [n] (multi-class) or
    0/1 [n, C] (multi-label)."""
    n = len(truncated)
    per_task = []
    for t in tasks:
        p = np.asarray(probs[t.name])
        top = p.argmax(-1) if n else np.zeros(0, dtype=np.int64)
        per_task.append((t, p.tolist(), top.tolist(), np.asarray(decisions[t.name]).tolist()))
    records = []
    for i in range(n):
        out: dict[str, dict] = {}
        for t, p, top, dec in per_task:
            scores = p[i]
            label = t.labels[top[i]]
            if t.multilabel:
                chosen = sorted((j for j, d in enumerate(dec[i]) if d), key=scores.__getitem__, reverse=True)
                labels = [t.labels[j] for j in chosen]
            else:
                labels = [label]
            out[t.name] = {"label": label, "labels": labels, "scores": dict(zip(t.labels, scores))}
        records.append({primary_task: out[primary_task]["label"], "tasks": out, "truncated": bool(truncated[i])})
    return records


def gold_labels(task: TaskSpec, target) -> list[str]:
    """The true labels of one row: a class id (multi-class) or a multi-hot row (multi-label)."""
    if task.multilabel:
        return [task.labels[j] for j, on in enumerate(np.asarray(target).tolist()) if on]
    return [task.labels[int(target)]]


def test_records(
    tasks: Sequence[TaskSpec],
    primary_task: str,
    ids: Sequence[str],
    texts: Sequence[str],
    targets: Mapping[str, np.ndarray],
    probs: Mapping[str, np.ndarray],
    decisions: Mapping[str, np.ndarray],
) -> list[dict]:
    """The records of a labelled split: id, text and gold labels first, then the prediction."""
    predicted = prediction_records(tasks, primary_task, probs, decisions, [False] * len(texts))
    return [
        {"id": ids[i], "text": texts[i], "gold": {t.name: gold_labels(t, targets[t.name][i]) for t in tasks}, **rec}
        for i, rec in enumerate(predicted)
    ]


def write_records(path: str | Path, records: Iterable[dict]) -> Path:
    """JSON lines, written whole or not at all."""
    from emotrain.io import atomic_write

    def write(fh) -> None:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")

    return atomic_write(path, write)


def read_records(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def error_analysis(records: Sequence[dict], tasks: Sequence[TaskSpec], *, top: int = 5) -> dict:
    """Per task, from records with gold labels: the `top` labels with the lowest F1 (with support) and the most
    frequent confusions (gold label -> predicted label; multi-label: a missed gold label paired with each wrong
    predicted label of the same text, or with "(none)" when nothing wrong was predicted)."""
    out = {}
    for t in tasks:
        tp, fp, fn = Counter(), Counter(), Counter()
        confusions = Counter()
        for r in records:
            gold = set(r["gold"][t.name])
            predicted = set(r["tasks"][t.name]["labels"])
            for label in gold & predicted:
                tp[label] += 1
            for label in predicted - gold:
                fp[label] += 1
            for label in gold - predicted:
                fn[label] += 1
                wrong = sorted(predicted - gold) or ["(none)"]
                for other in wrong:
                    confusions[(label, other)] += 1
        per_label = []
        for label in t.labels:
            support = tp[label] + fn[label]
            denominator = 2 * tp[label] + fp[label] + fn[label]
            f1 = 2 * tp[label] / denominator if denominator else 0.0
            per_label.append(
                {"label": label, "f1": round(f1, 4), "support": support, "predicted": tp[label] + fp[label]}
            )
        worst = sorted((p for p in per_label if p["support"]), key=lambda p: (p["f1"], -p["support"]))[:top]
        out[t.name] = {
            "worst_labels": worst,
            "confusions": [
                {"gold": g, "predicted": p, "count": n}
                for (g, p), n in sorted(confusions.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
            ],
            "examples": len(records),
        }
    return out
