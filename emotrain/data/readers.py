"""Reading data files: CSV, TSV, any single-character separator, JSON Lines, Parquet (shared by every data source).

The readers decode bytes themselves (exact byte offset and line of bad bytes, UTF-8 BOM
stripped), say what a file appears to be when it is not text of the expected encoding (UTF-16
without a byte-order mark, gzip/bzip2/xz/zip/Parquet under another name), keep the 1-based line
(or Parquet row) of every record so that every DataError can say where the problem is, and never
drop a row.

Quoting: ``format: csv`` (any ``sep``) honours CSV quotes, so separators, quotes and newlines may
sit inside quoted cells. ``format: tsv`` reads cells verbatim with no quote processing (texts
often start with a quote); a TSV file whose cells are quoted can be read with
``format: csv, sep: "\\t"``.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import lzma
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emotrain.errors import DataError
from emotrain.pii import scrub_pii

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
    if path.is_symlink() and not path.exists():
        raise DataError(
            f"{path} is a symbolic link that leads nowhere (its target is missing, or the links form a loop); "
            f"fix the link or point {key} at the file itself"
        )
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
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it (unzstd) first"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive", "extract it first"),
    (b"\x89PNG", "a PNG image", "point the setting at the data file"),
    (b"\xff\xd8\xff", "a JPEG image", "point the setting at the data file"),
    (b"%PDF-", "a PDF document", "export the table as CSV"),
    (b"\xd0\xcf\x11\xe0", "an old Office document (.xls/.doc)", "save the sheet as CSV"),
    (b"SQLite format 3\x00", "an SQLite database", "export the table as CSV"),
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
    if raw.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):  # before UTF-16: its BOM starts the same
        return (
            f"{path} starts with a UTF-32 byte-order mark, so it is UTF-32 text, not {codec}; "
            "set data.encoding=utf-32 (or save it as UTF-8)"
        )
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return (
            f"{path} starts with a UTF-16 byte-order mark, so it is UTF-16 text, not {codec}; "
            "set data.encoding=utf-16 (or save it as UTF-8)"
        )
    layout = _utf16_layout(raw)
    if layout:
        return (
            f"{path} appears to be UTF-16 text ({layout[7:].upper()}, no byte-order mark), not {codec}; "
            f"set data.encoding={layout} (or save it as UTF-8)"
        )
    return None


def read_text(path: Path, encoding: str, *, key: str, encoding_hint: str) -> str:
    """Decode a whole file; bad bytes are reported by byte offset and line."""
    raw = read_bytes(path, key)
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(
            f"data.encoding={encoding!r} is not a known text encoding; use e.g. utf-8, latin-1 or cp1252"
        ) from None
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
            f"{path} line {line} (byte offset {exc.start}): bytes {raw[exc.start : exc.end]!r} are not valid "
            f"{encoding}; "
            f"{encoding_hint}"
        ) from None
    text = text.removeprefix("\ufeff")
    nul = text.find("\x00")
    if nul >= 0:  # never in text: a binary or corrupted file (or one in another encoding)
        raise DataError(
            f"{path} line {text.count(chr(10), 0, nul) + 1}: a NUL character (byte 0) in the text; the file looks "
            f"binary, corrupted or in another encoding than {encoding}; remove it or set data.encoding"
        )
    return text


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

    def row_ids(self) -> list[str]:
        """FILE:LINE (or FILE:ROW) of every record: an id that leads back to the source."""
        return [f"{self.path.name}:{loc}" for loc in self.locations]

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
            raise DataError(
                f"{path} line 1: column name {cell_repr(n)} appears twice in the header; rename one of them"
            )
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
    """A key twice in one JSON object, or (`first` set) two keys that differ only in case."""

    def __init__(self, key: str, first: str | None = None):
        super().__init__(key)
        self.key, self.first = key, first


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    folded: dict[str, str] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        if isinstance(k, str) and k.casefold() in folded:  # 'label' and 'LABEL': one would be silently ignored
            raise _DuplicateKey(k, first=folded[k.casefold()])
        folded[k.casefold() if isinstance(k, str) else k] = k
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
            if dup.first is not None:
                raise DataError(
                    f"{path} line {lineno}: keys {cell_repr(dup.first)} and {cell_repr(dup.key)} differ only in case "
                    "in one object (one would be ignored); keep one spelling"
                ) from None
            raise DataError(
                f"{path} line {lineno}: key {cell_repr(dup.key)} appears twice in one object (JSON keeps only the "
                "last); keep one"
            ) from None
        except json.JSONDecodeError as exc:
            hint = (
                " (the file looks like one JSON array: convert it to JSON Lines)"
                if line.lstrip().startswith("[")
                else ""
            )
            raise DataError(
                f"{path} line {lineno}: not valid JSON ({exc.msg}, column {exc.colno}){hint}; "
                'each line must be one JSON object like {"text": ..., "label": ...}'
            ) from None
        if isinstance(obj, list) and not any(isinstance(x, dict) for x in obj):
            obj = {str(i): v for i, v in enumerate(obj)}
        if not isinstance(obj, dict):
            raise DataError(
                f"{path} line {lineno}: expected a JSON object, found {type(obj).__name__}; "
                'each line must be one JSON object like {"text": ..., "label": ...}'
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
    if sep is None:
        return _DEFAULT_SEPS.get(fmt, ",")
    if sep == "":
        raise DataError(
            "data.sep='' is empty; leave it unset (null: the format's default) or give one character, e.g. ',' or ';'"
        )
    sep = {"\\t": "\t", "tab": "\t", "TAB": "\t"}.get(sep, sep)  # as typed on a command line
    if len(sep) != 1:
        raise DataError(f"data.sep={sep!r} must be a single character (e.g. ',', ';', '|' or '\\t')")
    if sep in '\r\n"':
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
