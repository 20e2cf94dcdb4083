"""User tables -> DataBundle: CSV, TSV, any single-character separator, JSONL, Parquet.

The readers here are also the shared low-level file layer for the GoEmotions and
sample loaders: they decode bytes themselves (exact byte offset and line of bad
bytes, UTF-8 BOM stripped), keep the 1-based line (or Parquet row) of every record
so that every DataError can say where the problem is, and never drop a row.

Quoting: ``format: csv`` (any ``sep``) honours CSV quotes, so separators, quotes and
newlines may sit inside quoted cells. ``format: tsv`` reads cells verbatim with no
quote processing (texts often start with a quote); a TSV file whose cells are quoted
can be read with ``format: csv, sep: "\\t"``.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import dataclasses
import gzip
import io
import json
import lzma
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from omegaconf import DictConfig, OmegaConf

from emotrain.config import TableTaskConfig
from emotrain.data.splitting import stratified_holdout
from emotrain.data.types import DataBundle, Split, TaskSpec
from emotrain.errors import DataError
from emotrain.preprocessing import clean_whitespace, scrub_pii

log = logging.getLogger(__name__)

FORMATS = ("csv", "tsv", "jsonl", "parquet")

# Extension -> format for `format: auto`; .txt is read like TSV (tab, or data.sep).
EXTENSION_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
_DECOMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    ".gz": gzip.decompress,
    ".bz2": bz2.decompress,
    ".xz": lzma.decompress,
}
_DEFAULT_SEPS = {"csv": ",", "tsv": "\t"}
_CSV_FIELD_LIMIT = 2**31 - 1  # the default (128 KiB) rejects long documents

SPLIT_NAMES = ("train", "val", "test")


# --------------------------------------------------------------------------- paths and bytes


def cell_repr(value: Any, limit: int = 60) -> str:
    """A cell's content as quoted in an error message: PII masked (messages reach logs and
    status.json, which must not hold raw texts) and cut to `limit` characters."""
    shown = repr(scrub_pii(str(value)) if isinstance(value, str) else value)
    if not isinstance(value, str):
        shown = scrub_pii(shown)
    return shown if len(shown) <= limit else shown[:limit] + "..."



def resolve_path(value: str | Path, root_dir: Path) -> Path:
    """A user-given path: `~` expanded, relative paths taken from the launch directory."""
    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        path = Path(root_dir) / path
    return path


def check_file(path: Path, key: str) -> None:
    """DataError unless `path` is an existing file; `key` names the setting that gave it."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, not a file; point {key} at a data file")
    if not path.exists():
        raise DataError(f"{path} does not exist; check {key} (relative paths resolve against the launch directory)")


def read_bytes(path: Path, key: str) -> bytes:
    check_file(path, key)
    raw = path.read_bytes()
    decompress = _DECOMPRESSORS.get(path.suffix.lower())
    if decompress is not None:
        try:
            raw = decompress(raw)
        except Exception as exc:  # each module has its own error type
            raise DataError(f"{path}: cannot decompress ({type(exc).__name__}: {exc}); check the file") from None
    return raw


# Leading bytes of files that are not text, and what to do about each.
_MAGIC = (
    (b"\x1f\x8b", "gzip-compressed", "name it .gz (e.g. train.csv.gz) so it is decompressed, or gunzip it"),
    (b"BZh", "bzip2-compressed", "name it .bz2 so it is decompressed, or bunzip2 it"),
    (b"\xfd7zXZ\x00", "xz-compressed", "name it .xz so it is decompressed, or unxz it"),
    (b"PK\x03\x04", "a zip archive (or an Excel/ODS workbook)", "unzip it, or save the sheet as CSV"),
    (b"PAR1", "a Parquet file", "set data.format=parquet (or name it .parquet)"),
)


def _utf16_layout(raw: bytes) -> str | None:
    """'utf-16-le' / 'utf-16-be' when the bytes look like UTF-16 text without a byte-order mark."""
    sample = raw[:4096]
    if len(sample) < 4 or b"\x00" not in sample:
        return None
    odd, even = sample[1::2].count(0), sample[0::2].count(0)
    half = len(sample) // 2
    if odd > 0.4 * half and even < 0.05 * half:
        return "utf-16-le"
    if even > 0.4 * half and odd < 0.05 * half:
        return "utf-16-be"
    return None


def _not_text(path: Path, raw: bytes, codec: str) -> str | None:
    """Why `raw` cannot be `codec` text, when its first bytes say what the file really is."""
    for magic, what, fix in _MAGIC:
        if raw.startswith(magic):
            return f"{path} appears to be {what}, not a text file; {fix}"
    if codec.startswith("utf-16") or codec.startswith("utf-32"):
        return None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"{path} starts with a UTF-16 byte-order mark, so it is UTF-16 text, not {codec}; set data.encoding=utf-16 (or save it as UTF-8)"
    layout = _utf16_layout(raw)
    if layout:
        return f"{path} appears to be UTF-16 text ({layout[7:].upper()}, no byte-order mark), not {codec}; set data.encoding={layout} (or save it as UTF-8)"
    return None


def read_text(path: Path, encoding: str, *, key: str, encoding_hint: str) -> str:
    """Decode a whole file; bad bytes are reported by byte offset and line."""
    raw = read_bytes(path, key)
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"data.encoding={encoding!r} is not a known text encoding; use e.g. utf-8, latin-1 or cp1252") from None
    problem = _not_text(path, raw, codec)
    if problem:
        raise DataError(problem)
    if codec == "utf-8":
        codec = "utf-8-sig"  # strips a BOM if there is one
    try:
        text = raw.decode(codec)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path} line {line} (byte offset {exc.start}): bytes {raw[exc.start:exc.end]!r} are not valid {encoding}; "
            f"{encoding_hint}"
        ) from None
    return text.removeprefix("\ufeff")


# --------------------------------------------------------------------------- raw tables


_MISSING = object()  # a JSONL line without some key


@dataclass
class RawTable:
    """One file's cells, fetched column by column, with where each row came from."""

    path: Path
    names: list[str]
    locations: list[int]  # 1-based line (text formats) or row (Parquet) of each record
    fetch: Callable[[str], list]
    unit: str = "line"
    header: bool = True
    delimited: bool = False  # header / position hints only make sense for delimited text
    _cache: dict[str, list] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.locations)

    def where(self, i: int) -> str:
        return f"{self.path} {self.unit} {self.locations[i]}"

    def column(self, name: str, role: str) -> list:
        """Cells of one column; `role` says what it is for in error messages."""
        if name in self._cache:
            return self._cache[name]
        if name not in self.names:
            raise DataError(f"{self.path}: no column {name!r} ({role}); {self._available()}{self._name_hint(name)}")
        values = self.fetch(name)
        for i, v in enumerate(values):
            if v is _MISSING:
                raise DataError(f"{self.where(i)}: no key {name!r} ({role}); every line needs it")
        self._cache[name] = values
        return values

    def _available(self) -> str:
        shown = ", ".join(cell_repr(n) for n in self.names[:50]) + (", ..." if len(self.names) > 50 else "")
        if self.delimited and not self.header:
            return f"available columns (0-based positions, data.header=false): {shown}"
        return f"available columns: {shown}"

    def _name_hint(self, name: str) -> str:
        if not self.delimited:
            return ""
        if self.header and name.isdigit():
            return "; a position like this needs data.header=false (file without a header row)"
        if not self.header and not name.isdigit():
            return "; with data.header=false columns are named by position, e.g. data.text_column=0"
        return ""


def _fetch_from_rows(names: list[str], rows: list[list[str]]) -> Callable[[str], list]:
    position = {n: i for i, n in enumerate(names)}
    return lambda name: [row[position[name]] for row in rows]


def read_delimited(
    path: Path,
    *,
    sep: str,
    quoting: bool,
    header: bool,
    encoding: str = "utf-8",
    key: str = "the data path",
    encoding_hint: str = "save the file as UTF-8 or set data.encoding (e.g. data.encoding=latin-1)",
    expected_columns: int | None = None,
    layout: str = "",
) -> RawTable:
    """A delimited text file via the csv module (exact line numbers, CRLF and quoting handled).

    Every record must have the same number of cells (the header's, `expected_columns`,
    or the first row's). Blank lines are not records and are skipped.
    """
    text = read_text(path, encoding, key=key, encoding_hint=encoding_hint)
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    reader = csv.reader(
        io.StringIO(text, newline=""),  # newline="": csv sees \r\n itself, inside quotes too
        delimiter=sep,
        quoting=csv.QUOTE_MINIMAL if quoting else csv.QUOTE_NONE,
    )
    names: list[str] | None = None
    width = expected_columns
    rows: list[list[str]] = []
    locations: list[int] = []
    last_line = 0
    try:
        for row in reader:
            start, last_line = last_line + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if header and names is None:
                names = [c.strip() for c in row]
                _check_unique_names(path, names)
                width = len(names)
                continue
            if width is None:
                width = len(row)
            if len(row) != width:
                raise DataError(_width_message(path, start, last_line, width, len(row), sep, quoting, header, layout))
            rows.append(row)
            locations.append(start)
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: {exc}; check the quoting around that line") from None
    if header and names is None:
        raise DataError(f"{path} is empty (no header, no rows); point {key} at a file with data")
    if not rows:
        what = "only a header line" if header else "no lines"
        raise DataError(f"{path} has no data rows ({what}); add examples or point {key} at another file")
    if names is None:
        names = [str(i) for i in range(width or 0)]
    return RawTable(path, names, locations, _fetch_from_rows(names, rows), header=header, delimited=True)


def _check_unique_names(path: Path, names: list[str]) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(f"{path} line 1: column name {cell_repr(n)} appears twice in the header; rename one of them")
        seen.add(n)


def _width_message(path, start, end, width, found, sep, quoting, header, layout) -> str:
    span = f"line {start}" if end == start else f"lines {start}-{end}"
    expected = layout or ("as in the header" if header else "as in the first row")
    if quoting:
        fix = f"quote cells that contain the separator {sep!r}, or set data.sep to the file's separator"
        if end > start:
            fix = "the row spans several lines: look for an unbalanced quote; " + fix
    else:
        fix = f"cells cannot contain the separator {sep!r} in this format (no quoting); remove it from the text"
    return f"{path} {span}: expected {width} columns ({expected}), found {found}; {fix}"


class _DuplicateKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def read_jsonl(path: Path, *, encoding: str = "utf-8", key: str = "the data path") -> RawTable:
    """JSON Lines: one object per line (a JSON array per line gives columns named by position)."""
    text = read_text(path, encoding, key=key, encoding_hint="JSON Lines files should be UTF-8; or set data.encoding")
    records: list[dict] = []
    locations: list[int] = []
    # split on \n only: str.splitlines would also split on U+2028, which JSON strings may hold
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line, object_pairs_hook=_unique_keys)
        except _DuplicateKey as dup:
            raise DataError(
                f"{path} line {lineno}: key {cell_repr(dup.key)} appears twice in one object (JSON keeps only the last); keep one"
            ) from None
        except json.JSONDecodeError as exc:
            hint = " (the file looks like one JSON array: convert it to JSON Lines)" if line.lstrip().startswith("[") else ""
            raise DataError(
                f"{path} line {lineno}: not valid JSON ({exc.msg}, column {exc.colno}){hint}; "
                "each line must be one JSON object like {\"text\": ..., \"label\": ...}"
            ) from None
        if isinstance(obj, list) and not any(isinstance(x, dict) for x in obj):
            obj = {str(i): v for i, v in enumerate(obj)}
        if not isinstance(obj, dict):
            raise DataError(
                f"{path} line {lineno}: expected a JSON object, found {type(obj).__name__}; "
                "each line must be one JSON object like {\"text\": ..., \"label\": ...}"
            )
        records.append(obj)
        locations.append(lineno)
    if not records:
        raise DataError(f"{path} has no data rows (no JSON lines); add examples or point {key} at another file")
    names = list(dict.fromkeys(k for r in records for k in r))
    return RawTable(path, names, locations, lambda name: [r.get(name, _MISSING) for r in records])


def read_parquet(path: Path, *, header: bool = True, key: str = "the data path") -> RawTable:
    """A Parquet file via pandas/pyarrow; with header=false columns are renamed to positions."""
    import pandas as pd  # heavy import, only needed here

    check_file(path, key)
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt / non-Parquet files
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(
            f"{path}: cannot read as Parquet ({type(exc).__name__}: {first}); check the file or data.format"
        ) from None
    if len(df) == 0:
        raise DataError(f"{path} has no data rows; add examples or point {key} at another file")
    names = [str(i) for i in range(df.shape[1])] if not header else [str(c) for c in df.columns]
    position = {n: i for i, n in enumerate(names)}
    return RawTable(
        path,
        names,
        list(range(1, len(df) + 1)),
        lambda name: df.iloc[:, position[name]].tolist(),
        unit="row",
    )


def resolve_format(path: Path, fmt: str | None) -> str:
    """`format: auto` picks by extension (a trailing .gz/.bz2/.xz is looked through)."""
    fmt = (fmt or "auto").strip().lower()
    if fmt in ("json", "ndjson"):
        fmt = "jsonl"
    if fmt != "auto":
        if fmt not in FORMATS:
            raise DataError(f"data.format={fmt!r} is not a known format; use auto, {', '.join(FORMATS)}")
        return fmt
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _DECOMPRESSORS:
        suffixes = suffixes[:-1]
    ext = suffixes[-1] if suffixes else ""
    if ext not in EXTENSION_FORMATS:
        raise DataError(
            f"{path}: cannot tell the format from the extension {ext or '(none)'!r}; "
            f"set data.format to one of {', '.join(FORMATS)}"
        )
    return EXTENSION_FORMATS[ext]


def resolve_sep(fmt: str, sep: str | None) -> str:
    if sep is None or sep == "":
        return _DEFAULT_SEPS.get(fmt, ",")
    sep = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(sep, sep)  # as typed on a command line
    if len(sep) != 1:
        raise DataError(f"data.sep={sep!r} must be a single character (e.g. ',', ';', '|' or '\\t')")
    if sep in "\r\n\"":
        raise DataError(f"data.sep={sep!r} cannot be a quote or newline character; choose e.g. ',', ';', '|' or '\\t'")
    return sep


def read_table(
    path: Path,
    *,
    fmt: str | None = "auto",
    sep: str | None = None,
    header: bool = True,
    encoding: str = "utf-8",
    key: str = "the data path",
) -> RawTable:
    """Any supported file -> RawTable (format from `fmt` or the extension)."""
    check_file(path, key)  # "does not exist" / "is a directory" say more than "cannot tell the format"
    fmt = resolve_format(path, fmt)
    if fmt == "jsonl":
        return read_jsonl(path, encoding=encoding, key=key)
    if fmt == "parquet":
        return read_parquet(path, header=header, key=key)
    return read_delimited(
        path, sep=resolve_sep(fmt, sep), quoting=(fmt == "csv"), header=header, encoding=encoding, key=key
    )


# --------------------------------------------------------------------------- cells -> texts and labels


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
                f"{table.where(i)}: the text in column {column!r} is empty after normalisation (only invisible characters "
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
        raise DataError(f"data.tasks.{name} has unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_TASK_KEYS)}")
    column = raw.get("column")
    if column is None or str(column) in ("", "???"):
        raise DataError(f"data.tasks.{name}.column is not set; name the label column, e.g. +data.tasks.{name}.column=label")
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


def _scalar_token(v: Any) -> str:
    """One label value as a string (surrounding spaces stripped); '' for an empty cell."""
    if isinstance(v, str):
        if v.strip().lower() in MISSING_MARKERS:
            raise _CellProblem(f"holds {v.strip()!r}, a missing-value marker, not a label; fill in the label or remove that row")
        return v.strip()
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
        tokens = [t for t in (p.strip() for p in v.split(opts.delimiter)) if t]
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
        raise _CellProblem(f"label {cell_repr(token)} is not an integer id; use integer ids or set {opts.key}.ids=false") from None
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
    for i, v in enumerate(values):
        try:
            tokens = _cell_tokens(v, opts)
            if opts.ids:
                tokens = [_id_to_name(t, opts) for t in tokens]
        except _CellProblem as problem:
            raise DataError(f"{table.where(i)}: label column {opts.column!r}: {problem}") from None
        out.append(tokens)
    return out


def label_set(opts: TaskOptions, train_tokens: Iterable[list[str]]) -> tuple[str, ...]:
    """The configured labels, else those in the training split (sorted; ids by integer value)."""
    if opts.labels is not None:
        return opts.labels
    seen = {t for tokens in train_tokens for t in tokens}
    if not seen:
        raise DataError(
            f"task {opts.name!r}: no labels at all in the training split's column {opts.column!r}; check {opts.key}.column"
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
                    f"{table.where(i)}: unknown label {cell_repr(t)} in column {opts.column!r}; valid labels ({opts.labels_where}): "
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
    log.warning("task %r (column %r): labels that differ only in case are one label: %s (%d cells)", opts.name, opts.column, shown, changed)
    return {split: [[canonical.get(t, t) for t in ts] for ts in rows] for split, rows in tokens.items()}


def build_task(opts: TaskOptions, tables: Mapping[str, RawTable]) -> tuple[TaskSpec, dict[str, np.ndarray]]:
    """A task's spec and targets for every split; the label set comes from tables['train']."""
    tokens = unify_label_case(opts, {split: label_tokens(table, opts) for split, table in tables.items()})
    spec = TaskSpec(name=opts.name, labels=label_set(opts, tokens["train"]), multilabel=opts.multilabel)
    targets = {
        split: encode_labels(tables[split], tokens[split], spec, opts, is_train=(split == "train")) for split in tables
    }
    return spec, targets


# --------------------------------------------------------------------------- data=table


def _fraction(value: Any, key: str) -> float:
    f = float(value)
    if not 0.0 <= f < 1.0:
        raise DataError(f"{key}={value} must be at least 0 and below 1 (a fraction of the training file)")
    return f


def load_table(cfg: Any, root_dir: Path) -> DataBundle:
    """data=table: `cfg` is the data node (TableDataConfig fields, attribute access)."""
    tasks_cfg = cfg.tasks
    if isinstance(tasks_cfg, DictConfig):
        tasks_cfg = OmegaConf.to_container(tasks_cfg, resolve=True)
    if not tasks_cfg:
        raise DataError(
            "data.tasks is empty: name at least one label column, e.g. +data.tasks.emotion.column=label "
            "(and +data.tasks.emotion.multilabel=true for cells holding several labels)"
        )
    options = [task_options(str(name), raw) for name, raw in tasks_cfg.items()]

    files = {"train": cfg.train_file, "val": cfg.get("val_file"), "test": cfg.get("test_file")}
    paths = {split: resolve_path(f, root_dir) for split, f in files.items() if f not in (None, "")}
    tables = {
        split: read_table(
            path,
            fmt=cfg.format,
            sep=cfg.get("sep"),
            header=bool(cfg.header),
            encoding=str(cfg.encoding),
            key=f"data.{split}_file",
        )
        for split, path in paths.items()
    }
    text_column = str(cfg.text_column)
    for opts in options:
        if opts.column == text_column:
            raise DataError(
                f"data.text_column and {opts.key}.column both name column {text_column!r}: the model would read its own "
                "answer; point data.text_column at the text and the task at its label column"
            )
    texts = {split: text_cells(table, text_column) for split, table in tables.items()}

    specs: list[TaskSpec] = []
    targets: dict[str, dict[str, np.ndarray]] = {split: {} for split in tables}
    for opts in options:
        spec, by_split = build_task(opts, tables)
        specs.append(spec)
        for split, arr in by_split.items():
            targets[split][opts.name] = arr
    splits = {split: Split(texts[split], targets[split], name=split) for split in tables}
    sources = {split: str(path) for split, path in paths.items()}

    # Held-out splits carved from the training file; fractions are of the whole file.
    stratify_on = cfg.get("primary_task") or specs[0].name
    if stratify_on not in {s.name for s in specs}:
        raise DataError(f"data.primary_task={stratify_on!r} names no task; tasks are {', '.join(s.name for s in specs)}")
    val_fraction = _fraction(cfg.val_fraction, "data.val_fraction")
    test_fraction = _fraction(cfg.test_fraction, "data.test_fraction")
    seed = int(cfg.split_seed)
    carve_test = "test" not in splits and test_fraction > 0
    carve_val = "val" not in splits
    if carve_val and val_fraction <= 0:
        raise DataError(
            "no validation split: set data.val_file, or data.val_fraction above 0 to hold out part of the training file"
        )
    if carve_val and carve_test and val_fraction + test_fraction >= 1:
        raise DataError(
            f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction:g} leaves no training rows; lower them"
        )
    train_source = sources["train"]
    if carve_test:
        splits["train"], splits["test"] = stratified_holdout(
            splits["train"], specs, test_fraction, seed, stratify_on=stratify_on, held_name="test", source=train_source
        )
        sources["test"] = f"{train_source} (held out: test_fraction={test_fraction:g}, split_seed={seed})"
    if carve_val:
        remaining = val_fraction / (1.0 - test_fraction) if carve_test else val_fraction
        splits["train"], splits["val"] = stratified_holdout(
            splits["train"],
            specs,
            remaining,
            seed,
            stratify_on=stratify_on,
            held_name="val",
            source=train_source,
            shown_fraction=val_fraction,
        )
        sources["val"] = f"{train_source} (held out: val_fraction={val_fraction:g}, split_seed={seed})"

    return DataBundle(
        tasks=specs,
        train=splits["train"],
        val=splits["val"],
        test=splits.get("test"),
        primary_task=stratify_on,
        sources={split: sources[split] for split in SPLIT_NAMES if split in sources},
    )


__all__ = [
    "FORMATS",
    "RawTable",
    "TaskOptions",
    "build_task",
    "cell_repr",
    "check_file",
    "load_table",
    "read_delimited",
    "read_jsonl",
    "read_parquet",
    "read_table",
    "read_text",
    "resolve_format",
    "resolve_path",
    "resolve_sep",
    "task_options",
    "text_cells",
]
