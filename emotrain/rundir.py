"""One run per run directory: a lock keeps a second process out, and a directory that already holds
a run's results is refused unless the run is resuming it.

Reusing a directory (a fixed `hydra.run.dir`, or two launches at once) would otherwise mix two
runs: metrics.json from one, model/ and best.json from the other. The CLI claims the directory
before Hydra writes anything into it (emotrain.callbacks.RunDirGuard), multirun jobs and the
Python API before training. The lock is an flock on `.emotrain.lock`, released when the process
ends however it ends (a kill -9 included), so a stale lock never blocks a later run.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from pathlib import Path

from emotrain.errors import ConfigError

log = logging.getLogger(__name__)

LOCK_FILE = ".emotrain.lock"
# What a run leaves that a second run would mix with its own (.hydra/ and the log are Hydra's, rewritten per run).
RESULTS = ("metrics.json", "checkpoints", "model", "report", "bundle", "cv_split.json")
# Where atomic writes and exports stage their files (`.<name>.<random>.tmp`).
_TEMP_DIRS = ("", "checkpoints", "model", "report")


class RunDirLock:
    """A held claim on a run directory; `release()` (or the end of the process) gives it up."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(lock_path: Path) -> str:
    try:
        pid = lock_path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


def _try_lock(run_dir: Path) -> int | None:
    """An open descriptor holding the directory's lock, or None when another process holds it."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_resuming(run_dir: Path, resume: str | None, root_dir: Path) -> bool:
    """True when `resume` names `run_dir` itself or a checkpoint inside it."""
    if not resume:
        return False
    target = Path(resume).expanduser()
    target = (target if target.is_absolute() else Path(root_dir) / target).resolve()
    run_dir = run_dir.resolve()
    return target == run_dir or run_dir in target.parents


def validate_paths_config(paths_cfg) -> None:
    """paths.* before any work: an empty path would put the run's files in the launch directory, outside the run
    directory this module claims and locks."""
    for key in ("root_dir", "output_dir", "cache_dir"):
        value = getattr(paths_cfg, key)  # attribute access: a failing interpolation names its full key
        if value is None or not str(value).strip():
            raise ConfigError(f"paths.{key} is empty; leave it at its default or give a directory")


def _own(name: str) -> bool:
    """Files a run (or a failed earlier attempt, or Hydra) leaves in its directory."""
    return name in (LOCK_FILE, ".hydra", "status.json", *RESULTS) or name.endswith((".log", ".tmp"))


def claim_run_dir(
    run_dir: str | os.PathLike, *, resume: str | None = None, root_dir: str | os.PathLike = "."
) -> RunDirLock:
    """Lock `run_dir` for this process and check that it holds no other run; ConfigError (one line) otherwise.

    Resuming the run that lives in `run_dir` (resume=<run_dir> or one of its checkpoints) may
    continue in it: its leftover temporary files from an interrupted write are removed then.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = _try_lock(run_dir)
    if fd is None:
        raise ConfigError(
            f"run directory {run_dir} is in use by another emotrain process{_holder(run_dir / LOCK_FILE)}; "
            "wait for it to finish, or give this run its own directory (leave hydra.run.dir at its default)"
        )
    lock = RunDirLock(run_dir, fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        resuming = is_resuming(run_dir, resume, Path(root_dir))
        found = [name for name in RESULTS if (run_dir / name).exists()]
        if found and not resuming:
            raise ConfigError(
                f"run directory {run_dir} already holds a run ({', '.join(found)}); a second run there would mix their "
                f"results: choose a new hydra.run.dir, or continue that run with resume={run_dir}"
            )
        if resuming:
            remove_stale_temporaries(run_dir, locked=True)
        else:
            others = sorted(p.name for p in run_dir.iterdir() if not _own(p.name))
            if others:  # not a run's: the user's files, which the run's outputs would sit among
                log.warning(
                    "run directory %s already holds other files (%s%s); the run writes beside them",
                    run_dir,
                    ", ".join(others[:5]),
                    ", ..." if len(others) > 5 else "",
                )
    except BaseException:
        lock.release()
        raise
    return lock


def remove_stale_temporaries(run_dir: str | os.PathLike, *, locked: bool = False) -> int:
    """Delete the `.*.tmp` files and folders an interrupted write left in a run directory; returns how many.

    Only when no process holds the directory's lock (`locked`: this process holds it), so a
    running job's file in the middle of being written is never touched.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return 0
    fd = None
    if not locked:
        try:
            fd = _try_lock(run_dir)
        except OSError:  # a read-only run directory: nothing can be removed anyway
            return 0
        if fd is None:
            return 0
    try:
        removed = 0
        for sub in _TEMP_DIRS:
            folder = run_dir / sub if sub else run_dir
            for leftover in folder.glob(".*.tmp") if folder.is_dir() else ():
                try:
                    shutil.rmtree(leftover) if leftover.is_dir() and not leftover.is_symlink() else leftover.unlink()
                    removed += 1
                except OSError as e:
                    log.warning("could not remove the leftover temporary %s: %s", leftover, e)
        if removed:
            log.info("removed %d leftover temporary file(s) of an interrupted write from %s", removed, run_dir)
        return removed
    finally:
        if fd is not None:
            os.close(fd)
