"""Host (CPU) memory allocator settings for training on a CPU (`trainer.keep_host_memory`).

glibc's malloc serves every allocation above 32 MB with a fresh mmap() and unmaps it on
free. A BERT's dense word-embedding gradient is such an allocation (30,522 x 384 floats =
47 MB; with `trainer.compact_embeddings`, the default, only the rows of training tokens get
one) and is rebuilt each step, so every step page-faults ~11,000 zeroed pages back in:
~5-10% of a MiniLM step on this CPU (BENCHMARKS.md); other large blocks that each step
frees and allocates again (activations, gradients) fare alike. `keep_freed_host_memory`
makes glibc serve large blocks from the heap and keep freed memory for reuse, the same
effect as running under jemalloc or tcmalloc. Freed memory then stays with the process (peak RSS, not the
steady state, is what grows), which suits a training process. No-op off glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30  # only give memory back once 1 GiB at the top of the heap is free

_applied = False


def keep_freed_host_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory (glibc mallopt). True when applied."""
    global _applied
    if _applied:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to do
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    if not _applied:
        log.warning("trainer.keep_host_memory: mallopt refused the settings; training runs with the default allocator")
    return _applied
