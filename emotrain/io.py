"""Atomic file writes: a crash never leaves a truncated file under the final name."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from emotrain.utils import finite_or_none, json_safe

__all__ = [
    "atomic_write",
    "current_umask",
    "default_mode",
    "finite_or_none",
    "json_safe",
    "publish_modes",
    "write_json",
]


def current_umask() -> int:
    """The process umask, read without changing it where Linux reports it (os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode a plain open()/mkdir() would give: temporary files are private (0600/0700), outputs are not."""
    return (0o777 if directory else 0o666) & ~current_umask()


def publish_modes(directory: str | os.PathLike) -> None:
    """Give a staging directory and everything in it the modes a plain open()/mkdir() would (temp files are private;
    some writers, safetensors among them, create 0600 files): outputs follow the umask, so others can read results."""
    directory = Path(directory)
    os.chmod(directory, default_mode(directory=True))
    for p in directory.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, default_mode(directory=p.is_dir()))


def atomic_write(path: str | os.PathLike, write: Callable[[object], None], binary: bool = False) -> Path:
    """Write via `write(fh)` to a temporary file in the same directory, fsync, then rename over `path`.

    On any error the temporary file is removed and `path` is left as it was; an OSError
    that names no file (a failed write: ENOSPC, EIO) is re-raised naming `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, default_mode())  # mkstemp's 0600 would make every output private to its owner
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            # A failed write (ENOSPC, EIO, ...) names no file: name the one being written.
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    """`obj` as indented JSON (numpy/torch values, enums, paths and configs converted; NaN/inf as null), atomically."""
    return atomic_write(path, lambda fh: json.dump(json_safe(obj), fh, indent=2, sort_keys=False, allow_nan=False))
