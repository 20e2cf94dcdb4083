"""Label columns -> tasks: cells checked and split into label names, ids mapped, case variants unified, targets encoded.

Used by data=table and the built-in sample; every problem is a DataError naming the file and line.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from emotrain.config import TableTaskConfig
from emotrain.data.readers import RawTable, cell_repr
from emotrain.data.types import TaskSpec
from emotrain.errors import DataError
from emotrain.preprocessing import clean_whitespace

log = logging.getLogger(__name__)


def _describe(v: Any) -> str:
    if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v)):
        return "nothing (null)"
    if isinstance(v, (bool, np.bool_)):
        kind = "a boolean"
    elif isinstance(v, (int, float, np.integer, np.floating)):
        kind = "a number"
    elif isinstance(v, (list, tuple, np.ndarray)):
        kind = "a list"
    elif isinstance(v, dict):
        kind = "an object"
    else:
        kind = f"a {type(v).__name__} value"
    return f"{kind} ({cell_repr(v if not isinstance(v, np.ndarray) else v.tolist())})"


def text_cells(table: RawTable, column: str) -> list[str]:
    """The text column, checked: every cell a non-blank string (text is not altered here)."""
    values = table.column(column, "text column, data.text_column")
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise DataError(
                f"{table.where(i)}: the text column {column!r} holds {_describe(v)}, not text; fix or remove that row"
            )
        if not v.strip():
            raise DataError(f"{table.where(i)}: empty text in column {column!r}; fill it in or remove that row")
        if not clean_whitespace(v):
            raise DataError(
                f"{table.where(i)}: the text in column {column!r} is empty after normalisation (only invisible "
                "characters "
                f"such as zero-width spaces, {cell_repr(v)}); fill it in or remove that row"
            )
    return list(values)


@dataclass(frozen=True)
class TaskOptions:
    """One label column (data.tasks.<name>), validated; see TableTaskConfig."""

    name: str
    column: str
    multilabel: bool = False
    delimiter: str = ","
    labels: tuple[str, ...] | None = None
    ids: bool = False
    # Where `labels` came from, for errors; the table loader's default is the config key.
    labels_origin: str = ""

    @property
    def key(self) -> str:
        return f"data.tasks.{self.name}"

    @property
    def labels_where(self) -> str:
        return self.labels_origin or f"{self.key}.labels"


_TASK_KEYS = tuple(f.name for f in dataclasses.fields(TableTaskConfig))


def task_options(name: str, raw: Mapping[str, Any] | None) -> TaskOptions:
    """Plain mapping (from the config) -> TaskOptions, with the schema's defaults."""
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(_TASK_KEYS))
    if unknown:
        raise DataError(
            f"data.tasks.{name} has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_TASK_KEYS)}"
        )
    column = raw.get("column")
    if column is None or str(column) in ("", "???"):
        raise DataError(
            f"data.tasks.{name}.column is not set; name the label column, e.g. +data.tasks.{name}.column=label"
        )
    labels = raw.get("labels")
    if labels is not None:
        if isinstance(labels, str):
            raise DataError(f"data.tasks.{name}.labels must be a list, e.g. [anger, joy], not {labels!r}")
        labels = tuple(str(x).strip() for x in labels)
        if not labels:
            raise DataError(f"data.tasks.{name}.labels is an empty list; list the label names or set it to null")
        dup = [x for i, x in enumerate(labels) if x in labels[:i]]
        if dup:
            raise DataError(f"data.tasks.{name}.labels lists {dup[0]!r} twice; each label name must be unique")
    delimiter = str(raw.get("delimiter") if raw.get("delimiter") is not None else ",")
    if not delimiter:
        raise DataError(f"data.tasks.{name}.delimiter is empty; set it to the string between labels, e.g. ','")
    return TaskOptions(
        name=str(name),
        column=str(column),
        multilabel=bool(raw.get("multilabel", False)),
        delimiter=delimiter,
        labels=labels,
        ids=bool(raw.get("ids", False)),
    )


class _CellProblem(Exception):
    """A bad label cell; the caller adds file and line."""


# Cells that spreadsheets and pandas write for a missing value; never a label name.
MISSING_MARKERS = frozenset({"nan", "null", "<na>", "n/a", "#n/a"})


def _tidy(token: str) -> str:
    """A label as typed, tidied: surrounding whitespace (tabs too) removed, Unicode composed (NFC), so 'café' typed
    with a combining accent and 'café' precomposed are one label."""
    return unicodedata.normalize("NFC", token.strip())


def _scalar_token(v: Any) -> str:
    """One label value as a string (surrounding spaces stripped); '' for an empty cell."""
    if isinstance(v, str):
        if v.strip().lower() in MISSING_MARKERS:
            raise _CellProblem(
                f"holds {v.strip()!r}, a missing-value marker, not a label; fill in the label or remove that row"
            )
        return _tidy(v)
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        raise _CellProblem(f"holds a boolean ({v!r}), not a label name or id")
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return ""
        return str(int(v)) if float(v).is_integer() else str(v)  # ints stored as floats by pandas
    raise _CellProblem(f"holds {_describe(v)}, not a label name or id")


def _cell_tokens(v: Any, opts: TaskOptions) -> list[str]:
    if isinstance(v, (list, tuple, np.ndarray)):  # JSONL / Parquet list cells
        tokens = [t for t in (_scalar_token(x) for x in v) if t]
    elif opts.multilabel and isinstance(v, str):
        tokens = [t for t in (_tidy(p) for p in v.split(opts.delimiter)) if t]
    else:
        token = _scalar_token(v)
        tokens = [token] if token else []
    if not opts.multilabel and len(tokens) != 1:
        if not tokens:
            raise _CellProblem("empty cell; every row needs a label")
        raise _CellProblem(f"holds {len(tokens)} labels but the task is single-label; set {opts.key}.multilabel=true")
    return tokens


def _id_to_name(token: str, opts: TaskOptions) -> str:
    try:
        value = int(token)
    except ValueError:
        raise _CellProblem(
            f"label {cell_repr(token)} is not an integer id; use integer ids or set {opts.key}.ids=false"
        ) from None
    if opts.labels is not None:
        if not 0 <= value < len(opts.labels):
            raise _CellProblem(
                f"label id {value} is out of range 0..{len(opts.labels) - 1} "
                f"({len(opts.labels)} names in {opts.labels_where}); fix the id or the label list"
            )
        return opts.labels[value]
    if value < 0:
        raise _CellProblem(f"label id {value} is negative; ids must be 0 or more")
    return str(value)


def label_tokens(table: RawTable, opts: TaskOptions) -> list[list[str]]:
    """Per row, the label names in a task's column (ids already turned into names)."""
    values = table.column(opts.column, f"label column of task {opts.name!r}, {opts.key}.column")
    out: list[list[str]] = []
    tidied: list[tuple[int, str]] = []  # cells whose labels tidying changed beyond plain spaces
    for i, v in enumerate(values):
        if isinstance(v, str):
            parts = v.split(opts.delimiter) if opts.multilabel else [v]
            if any(p.strip(" ") and p.strip(" ") != _tidy(p) for p in parts):
                tidied.append((i, v))
        try:
            tokens = _cell_tokens(v, opts)
            if opts.ids:
                tokens = [_id_to_name(t, opts) for t in tokens]
        except _CellProblem as problem:
            raise DataError(f"{table.where(i)}: label column {opts.column!r}: {problem}") from None
        out.append(tokens)
    if tidied:
        i, v = tidied[0]
        log.warning(
            "%s: label column %r: %d label cell(s) held tabs, other whitespace or uncomposed accents around or in "
            "the label (first: %s); read as the tidied label",
            table.where(i),
            opts.column,
            len(tidied),
            cell_repr(v),
        )
    return out


def label_set(opts: TaskOptions, train_tokens: Iterable[list[str]]) -> tuple[str, ...]:
    """The configured labels, else those in the training split (sorted; ids by integer value)."""
    if opts.labels is not None:
        return opts.labels
    seen = {t for tokens in train_tokens for t in tokens}
    if not seen:
        raise DataError(
            f"task {opts.name!r}: no labels at all in the training split's column {opts.column!r}; check "
            f"{opts.key}.column"
        )
    return tuple(sorted(seen, key=int) if opts.ids else sorted(seen))


def encode_labels(
    table: RawTable,
    tokens: list[list[str]],
    task: TaskSpec,
    opts: TaskOptions,
    *,
    is_train: bool,
) -> np.ndarray:
    """Label names -> int64 class ids [n] or float32 multi-hot [n, num_labels]."""
    index = {name: i for i, name in enumerate(task.labels)}
    n = len(tokens)
    try:
        if task.multilabel:
            rows = np.fromiter((r for r, ts in enumerate(tokens) for _ in ts), dtype=np.int64)
            cols = np.fromiter((index[t] for ts in tokens for t in ts), dtype=np.int64)
            out = np.zeros((n, task.num_labels), dtype=np.float32)
            out[rows, cols] = 1.0
            return out
        return np.fromiter((index[ts[0]] for ts in tokens), dtype=np.int64, count=n)
    except KeyError:
        pass
    # slow path, only to say where the unknown label is
    for i, ts in enumerate(tokens):
        for t in ts:
            if t in index:
                continue
            if opts.labels is not None and not opts.ids:
                raise DataError(
                    f"{table.where(i)}: unknown label {cell_repr(t)} in column {opts.column!r}; valid labels "
                    f"({opts.labels_where}): "
                    f"{', '.join(task.labels)} - fix the cell or add the label there"
                )
            if is_train:  # cannot happen: the label set came from this split
                raise DataError(f"{table.where(i)}: label {cell_repr(t)} of task {opts.name!r} is not in its label set")
            raise DataError(
                f"{table.where(i)}: label {cell_repr(t)} (task {opts.name!r}) never occurs in the training split; "
                f"add training examples of it or list all labels in {opts.key}.labels"
            )
    raise AssertionError("unreachable")


def unify_label_case(opts: TaskOptions, tokens: dict[str, list[list[str]]]) -> dict[str, list[list[str]]]:
    """Labels that differ only in case ('joy' / 'JOY') are one label: the spelling of `labels` if
    configured, else the training split's most frequent one; logged as one warning line."""
    counts: dict[str, int] = {}
    for rows in (tokens["train"], *(v for k, v in tokens.items() if k != "train")):
        for ts in rows:
            for t in ts:
                counts[t] = counts.get(t, 0) + 1
    spellings: dict[str, list[str]] = {}
    for t in counts:
        spellings.setdefault(t.casefold(), []).append(t)
    configured = {label.casefold(): label for label in (opts.labels or ()) if not opts.ids}
    canonical: dict[str, str] = {}
    for folded, variants in spellings.items():
        if len(variants) == 1 and (folded not in configured or configured[folded] == variants[0]):
            continue
        chosen = configured.get(folded) or max(variants, key=lambda s: (counts[s], s == s.lower(), s))
        canonical.update({v: chosen for v in variants if v != chosen})
    if not canonical:
        return tokens
    changed = sum(counts[v] for v in canonical)
    shown = ", ".join(f"{cell_repr(v)} -> {cell_repr(c)}" for v, c in sorted(canonical.items()))
    log.warning(
        "task %r (column %r): labels that differ only in case are one label: %s (%d cells)",
        opts.name,
        opts.column,
        shown,
        changed,
    )
    return {split: [[canonical.get(t, t) for t in ts] for ts in rows] for split, rows in tokens.items()}


def build_task(opts: TaskOptions, tables: Mapping[str, RawTable]) -> tuple[TaskSpec, dict[str, np.ndarray]]:
    """A task's spec and targets for every split; the label set comes from tables['train']."""
    tokens = unify_label_case(opts, {split: label_tokens(table, opts) for split, table in tables.items()})
    spec = TaskSpec(name=opts.name, labels=label_set(opts, tokens["train"]), multilabel=opts.multilabel)
    targets = {
        split: encode_labels(tables[split], tokens[split], spec, opts, is_train=(split == "train")) for split in tables
    }
    return spec, targets
