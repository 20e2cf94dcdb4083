"""Small single-purpose helpers shared by training, reports and inference (no torch, no Hydra).

- `one_line`: a message as one line (the form every user-facing error takes).
- `os_error_advice`: what to do about a failed file operation, by errno.
- `finite_or_none`: a finite float or None.
- `json_safe`: plain JSON values from configs, numpy/torch values, enums and paths.
- `is_better` / `best_index`: the one definition of "better" for a monitored value (min or max).
- `OneLineArgumentParser`: argparse whose usage errors are one line (exit 2), as every other error.
"""

from __future__ import annotations

import argparse
import enum
import errno
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any


def one_line(text: Any, limit: int | None = None) -> str:
    """`text` with every run of whitespace (newlines too) as one space; cut to `limit` characters with '...'."""
    s = " ".join(str(text).split())
    if limit is not None and len(s) > limit:
        s = s[: limit - 3] + "..."
    return s


def os_error_advice(code: int | None, *, where: str = "hydra.run.dir=DIR") -> str:
    """What to do about an OSError with errno `code`; `where` names the setting that moves the output elsewhere."""
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"free disk space or write somewhere with room ({where})"
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"fix the permissions or use another location ({where})"
    if code in (errno.ENOTDIR, errno.EEXIST):
        return f"part of that path is a file, not a directory; choose another location ({where})"
    return f"check the path, its permissions and the free disk space ({where})"


def json_safe(obj: Any) -> Any:
    """Plain JSON: containers to dict/list (OmegaConf configs resolved), numpy/torch values and arrays to Python,
    enums to their values, paths to strings, non-finite floats to None (JSON has no NaN)."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if type(obj).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return json_safe(OmegaConf.to_container(obj, resolve=True, enum_to_str=True))
    if isinstance(obj, enum.Enum):
        return json_safe(obj.value)
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return json_safe(obj.tolist())
    if hasattr(obj, "to_dict"):
        return json_safe(obj.to_dict())
    return str(obj)


def finite_or_none(value) -> float | None:
    """A finite float, or None (missing, NaN, inf, bool, non-numeric)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    """True when `value` beats `best` (None: nothing yet) by more than `min_delta`: lower for "min", higher
    for "max"."""
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def best_index(values: Sequence[float | None], mode: str) -> int | None:
    """Index of the best finite value (the first on ties), None when there is none."""
    best = None
    for i, v in enumerate(values):
        if v is not None and math.isfinite(v) and (best is None or is_better(v, values[best], mode)):
            best = i
    return best


class OneLineArgumentParser(argparse.ArgumentParser):
    """A bad argument gives `PROG: error: MESSAGE (see PROG --help)` and exit status 2, not the usage text too."""

    def error(self, message: str):
        print(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
