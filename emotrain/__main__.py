"""`python -m emotrain [group=option ...] [key=value ...]`: the Hydra entry point (console script `emotrain`).

User errors end the command with one line on stderr, `emotrain: error: ...`, and exit
status 2: a config override Hydra cannot compose (wrong type, unknown key or option) or
resolve, an EmotrainError (bad data, impossible config, unusable checkpoint, diverged
training) and an OSError (a run directory that cannot be written, a full disk). The run
directory keeps status.json with the reason. HYDRA_FULL_ERROR=1 adds the full traceback.

Under torchrun (`torchrun --nproc_per_node=N -m emotrain ...`) every process runs this:
only rank 0 writes status.json, and the other ranks prefix their error lines with
`[rank N]` (rank 0 prints as a single process does).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import emotrain.config  # noqa: F401  (registers the structured-config schemas)
from emotrain import distributed as ddp
from emotrain.callbacks import SweepJobFailed  # also registers the config resolvers
from emotrain.errors import EmotrainError
from emotrain.io import write_json

log = logging.getLogger("emotrain")

CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")
USAGE_ERROR = 2  # exit status for user errors (as argparse)


def _full_error() -> bool:
    """HYDRA_FULL_ERROR=1 (Hydra's own switch): show full tracebacks."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) if ("\n" in str(text) or "\r" in str(text)) else str(text)


def os_error_message(e: OSError, *, run_dir: bool = False) -> str:
    """One line for an OSError: the path, what went wrong, what to do."""
    where = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    what = e.strerror or type(e).__name__
    code = e.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix = "free disk space or write somewhere with room (hydra.run.dir=DIR); a run stopped by this continues with resume=<its run dir>"
    elif code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "fix the permissions or use another location (hydra.run.dir=DIR for the run directory)"
    elif code in (errno.ENOTDIR, errno.EEXIST):
        fix = "part of that path is a file, not a directory; choose another location (hydra.run.dir=DIR, paths.output_dir, paths.cache_dir)"
    elif run_dir:
        fix = "check that the run directory can be created and written (hydra.run.dir=DIR, or hydra.sweep.dir=DIR with -m)"
    else:
        fix = "check the path, its permissions and the free disk space"
    if run_dir:
        return f"cannot write the run directory: {where}: {what}; {fix}"
    return f"{where}: {what}; {fix}"


def _hydra_lines(text: str) -> tuple[list[str], str | None]:
    """Hydra/OmegaConf message lines without their debugging detail; (lines, full_key)."""
    lines: list[str] = []
    key = None
    listing = False
    for raw in text.splitlines():
        s = raw.strip()
        if not s:
            continue
        if s.startswith("full_key:"):
            key = s.split(":", 1)[1].strip() or None
            continue
        if s.startswith(("reference_type=", "object_type=")):
            continue
        if s == "Config search path:":  # followed by the provider list: not for users
            break
        if listing and raw[:1] in ("\t", " ") and lines:
            lines[-1] += (" " if lines[-1].endswith(":") else ", ") + s  # "Available options in 'x': a, b, c"
            continue
        listing = s.endswith(":")
        lines.append(s)
    return lines, key


def hydra_error_line(ex: BaseException) -> str:
    """Hydra's multi-line composition error (override, key, options) as one line."""
    own, key = _hydra_lines(str(ex))
    cause = ex.__cause__
    cause_lines: list[str] = []
    if isinstance(cause, OmegaConfBaseException) and cause is not ex:
        cause_lines, cause_key = _hydra_lines(str(cause))
        key = key or cause_key
    parts = [p.rstrip(".") for p in own[:1] + cause_lines + own[1:] if p.strip(".")]
    text = parts[0] if parts else type(ex).__name__
    if len(parts) > 1:
        # "Error merging override k=v: <why>"; otherwise the parts are separate sentences
        text += (": " if cause_lines else "; ") + "; ".join(parts[1:])
    override = getattr(ex, "override", None)  # OverrideParseException: the message does not name it
    if override:
        text = f"override {override!r}: {text}"
    if key and key not in text:
        text += f" (key {key})"
    return text


def _prefix() -> str:
    """'emotrain: ' alone or on rank 0; 'emotrain [rank N]: ' on the other torchrun ranks."""
    rank = ddp.get_rank()
    return f"emotrain [rank {rank}]: " if rank else "emotrain: "


def _usage_exit(message: str):
    print(f"{_prefix()}error: {_one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


@contextlib.contextmanager
def _one_line_hydra_errors():
    """While Hydra runs: its config-composition errors and run-directory OSErrors become one line.

    Hydra prints those over several lines (plus the config search path); everything else,
    and everything under HYDRA_FULL_ERROR=1, is left to Hydra.
    """
    import hydra._internal.utils as hydra_utils

    original = getattr(hydra_utils, "run_and_report", None)
    if original is None or _full_error():
        yield
        return

    def run_and_report(func):
        def guarded():
            try:
                return func()
            except SweepJobFailed:
                raise  # already one line; Hydra reports it after the sweep
            except (CompactHydraException, OmegaConfBaseException) as ex:
                _usage_exit(hydra_error_line(ex))
            except OSError as ex:
                # Our task function turns its own OSErrors into one line, so this one is
                # Hydra's: creating the run directory, its log file or .hydra/.
                _usage_exit(os_error_message(ex, run_dir=True))

        return original(guarded)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original


def _write_status(out_dir: Path, status: dict) -> None:
    if not ddp.is_main_process():  # data parallel: only rank 0 writes
        return
    try:
        write_json(out_dir / "status.json", status)
    except OSError as e:  # the disk is full or the directory went away: the message still goes out
        log.warning("could not write %s: %s", out_dir / "status.json", e)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    from emotrain.train import TrainingDiverged, TrainingInterrupted, run  # heavy imports after Hydra has parsed the command line

    hc = HydraConfig.get()
    # As typed: iterating the ListConfig would resolve "${...}" inside override strings (and fail on a bad one).
    overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]
    out_dir = Path(hc.runtime.output_dir)
    try:
        results = run(cfg, overrides=overrides)
        ddp.barrier()  # data parallel: no rank exits before rank 0 has written its outputs
    except TrainingInterrupted as e:
        _write_status(out_dir, {"status": "interrupted", "checkpoint": str(e.checkpoint), "message": str(e), "overrides": overrides})
        log.warning("%s", e)
        if ddp.is_main_process():  # the other ranks stopped with it; rank 0 saved the checkpoint
            print(f"emotrain: {e}", file=sys.stderr)
        sys.exit(130)  # the shell's code for "ended by Ctrl-C"
    except (EmotrainError, OSError, OmegaConfBaseException) as e:
        if isinstance(e, EmotrainError):
            message, status = _one_line(e), ("diverged" if isinstance(e, TrainingDiverged) else "failed")
        elif isinstance(e, OSError):
            message, status = os_error_message(e), "failed"
        else:  # a config value that cannot be resolved (e.g. ${oc.env:...} of an unset variable)
            message, status = hydra_error_line(e), "failed"
        _write_status(out_dir, {"status": status, "error": message, "overrides": overrides})
        log.error("%s", message)
        if hc.mode == RunMode.MULTIRUN:
            # Hydra runs the remaining jobs of the batch, then reports this one line (no
            # traceback) and exits non-zero; Optuna records the trial as failed.
            raise SweepJobFailed(f"emotrain: error in job {hc.job.num} ({out_dir}): {message}") from e
        print(f"{_prefix()}error: {message}", file=sys.stderr, flush=True)
        if _full_error():
            raise  # Hydra prints the whole traceback
        sys.exit(USAGE_ERROR)
    except KeyboardInterrupt:
        _write_status(out_dir, {"status": "interrupted", "overrides": overrides})
        raise
    except Exception as e:
        _write_status(out_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}", "overrides": overrides})
        raise
    finally:
        ddp.cleanup()  # leave the torchrun process group (no-op in one process)
    return results["objective"]["value"]


def main() -> float | None:
    """Console script `emotrain` and `python -m emotrain`: Hydra's command line, errors as one line."""
    sys.argv = ddp.hydra_argv(sys.argv)  # torchrun: a Hydra callback gives all ranks rank 0's run dir
    with _one_line_hydra_errors():
        return hydra_main()


if __name__ == "__main__":
    main()
