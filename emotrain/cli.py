"""The Hydra application behind `python -m emotrain [group=option ...] [key=value ...]` (console script `emotrain`).

User errors end the command with one line on stderr, `emotrain: error: ...`, and exit
status 2: a config override Hydra cannot compose (wrong type, unknown key or option) or
resolve, an EmotrainError (bad data, impossible config, unusable checkpoint, diverged
training) and an OSError (a run directory that cannot be written, a full disk). The run
directory keeps status.json with the reason. HYDRA_FULL_ERROR=1 adds the full traceback.

The configs ship inside the package (``pkg://emotrain.conf``), so an installed wheel runs from
any directory; ``--config-dir DIR`` (or ``hydra.searchpath=[file://DIR]``) puts a user's own
config folder in front of them.

Under torchrun (`torchrun --nproc_per_node=N -m emotrain ...`) every process runs this:
only rank 0 writes status.json, and the other ranks prefix their error lines with
`[rank N]` (rank 0 prints as a single process does).
"""

from __future__ import annotations

import dataclasses
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
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

import emotrain.config  # noqa: F401  (registers the structured-config schemas)
from emotrain import distributed as ddp
from emotrain.callbacks import SweepJobFailed, hydra_argv  # also registers the config resolvers
from emotrain.config import unknown_key_message
from emotrain.console import FILE_ONLY
from emotrain.errors import EmotrainError, TrainingDiverged, TrainingInterrupted
from emotrain.io import write_json
from emotrain.rundir import claim_run_dir
from emotrain.utils import one_line, os_error_advice

log = logging.getLogger("emotrain")

CONFIG_PATH = "pkg://emotrain.conf"  # inside the package: a wheel install finds them from any directory
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
USAGE_ERROR = 2  # exit status for user errors (as argparse)


_user_full_error: bool | None = None  # the user's HYDRA_FULL_ERROR while main() sets its own


def _full_error() -> bool:
    """HYDRA_FULL_ERROR=1 (Hydra's own switch), as the user set it: show full tracebacks."""
    if _user_full_error is not None:
        return _user_full_error
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def os_error_message(e: OSError, *, run_dir: bool = False) -> str:
    """One line for an OSError: the path, what went wrong, what to do."""
    where = e.filename if e.filename is not None else "a file"
    if e.filename2 is not None:
        where = f"{where} -> {e.filename2}"
    what = e.strerror or type(e).__name__
    if e.errno in (errno.ENOTDIR, errno.EEXIST):  # any of the output locations may be the one under a file
        settings = "hydra.run.dir=DIR, paths.output_dir, paths.cache_dir"
    else:
        settings = "hydra.run.dir=DIR, or hydra.sweep.dir=DIR with -m" if run_dir else "hydra.run.dir=DIR"
    fix = os_error_advice(e.errno, where=settings)
    if e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        fix += "; a run stopped by this continues with resume=<its run dir>"
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


def _quoting_hint(override: str, message: str) -> str | None:
    """For a character Hydra's override lexer rejects (`data.sep=;`): the quoting that works."""
    first = message.splitlines()[0] if message else ""
    prefix = "LexerNoViableAltException: "
    if not first.startswith(prefix) or "=" not in override:
        return None
    lines = message.splitlines()
    caret = lines[1].find("^") - len(prefix) if len(lines) > 1 else -1
    bad = override[caret] if 0 <= caret < len(override) else None
    key, _, value = override.partition("=")
    quoted = f'"{key}=\\"{value}\\""' if "'" in value else f"\"{key}='{value}'\""
    what = f"{bad!r} is a special character" if bad else "the value has a special character"
    return f"override {override!r}: {what} in Hydra's override syntax; quote the value: {quoted}"


def _unknown_key_line(ex: BaseException) -> str | None:
    """Hydra's 'Could not override ... Key 'x' not in 'Schema'' as the closest valid key (its '+key' hint misleads)."""
    missing_key = (ConfigKeyError, ConfigAttributeError)
    cause = ex.__cause__ if isinstance(ex.__cause__, missing_key) else ex if isinstance(ex, missing_key) else None
    schema = getattr(cause, "object_type", None)
    full_key, key = getattr(cause, "full_key", None), getattr(cause, "key", None)
    if (
        cause is None
        or not dataclasses.is_dataclass(schema)
        or not full_key
        or key in {f.name for f in dataclasses.fields(schema)}
    ):
        return None
    return unknown_key_message(str(full_key), schema)


def hydra_error_line(ex: BaseException) -> str:
    """Hydra's multi-line composition error (override, key, options) as one line."""
    override = getattr(ex, "override", None)
    if override and (hint := _quoting_hint(str(override), str(ex))):
        return hint
    if (line := _unknown_key_line(ex)) is not None:
        return line
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
    if override:  # OverrideParseException: the message does not name it
        text = f"override {override!r}: {text}"
    if key and key not in text:
        text += f" (key {key})"
    return text


def _prefix() -> str:
    """'emotrain: ' alone or on rank 0; 'emotrain [rank N]: ' on the other torchrun ranks."""
    rank = ddp.get_rank()
    return f"emotrain [rank {rank}]: " if rank else "emotrain: "


def _usage_exit(message: str):
    print(f"{_prefix()}error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(USAGE_ERROR)


def _write_status(out_dir: Path, status: dict) -> None:
    if not ddp.is_main_process():  # data parallel: only rank 0 writes
        return
    try:
        write_json(out_dir / "status.json", status)
    except OSError as e:  # the disk is full or the directory went away: the message still goes out
        log.warning("could not write %s: %s", out_dir / "status.json", e)


def error_message(e: BaseException) -> str:
    """The one line a user sees for an error that stopped a run."""
    if isinstance(e, EmotrainError):
        return one_line(e)
    if isinstance(e, OSError):
        return os_error_message(e)
    return hydra_error_line(e)  # a config value that cannot be resolved (e.g. ${oc.env:...} of an unset variable)


def record_run(cfg: DictConfig, overrides: list[str], out_dir: Path) -> dict:
    """Train one model (emotrain.recipe.run); a run that fails leaves status.json saying why, then the error goes on.

    Shared by the CLI and the Python API (emotrain.train), so both leave the same run directory.
    """
    from emotrain.recipe import run  # heavy imports only once the command line has been parsed

    try:
        results = run(cfg, overrides=overrides)
        ddp.barrier()  # data parallel: no rank exits before rank 0 has written its outputs
        return results
    except TrainingInterrupted as e:
        _write_status(
            out_dir,
            {"status": "interrupted", "checkpoint": str(e.checkpoint), "message": str(e), "overrides": overrides},
        )
        log.warning("%s", e, extra=FILE_ONLY)
        raise
    except (EmotrainError, OSError, OmegaConfBaseException) as e:
        message = error_message(e)
        _write_status(
            out_dir,
            {
                "status": "diverged" if isinstance(e, TrainingDiverged) else "failed",
                "error": message,
                "overrides": overrides,
            },
        )
        log.error("%s", message, extra=FILE_ONLY)  # the log file keeps it; the console gets the one stderr line
        raise
    except KeyboardInterrupt:
        _write_status(out_dir, {"status": "interrupted", "overrides": overrides})
        raise
    except Exception as e:
        _write_status(out_dir, {"status": "failed", "error": f"{type(e).__name__}: {e}", "overrides": overrides})
        raise
    finally:
        ddp.cleanup()  # leave the torchrun process group (no-op in one process)


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    hc = HydraConfig.get()
    # As typed: iterating the ListConfig would resolve "${...}" inside override strings (and fail on a bad one).
    overrides = [str(o) for o in OmegaConf.to_container(hc.overrides.task, resolve=False)]
    out_dir = Path(hc.runtime.output_dir)
    try:
        # A multirun job claims its own directory here (a single run's was claimed by RunDirGuard before Hydra
        # wrote to it).
        job_lock = (
            claim_run_dir(out_dir, resume=cfg.get("resume"), root_dir=Path.cwd())
            if hc.mode == RunMode.MULTIRUN
            else None
        )
        try:
            results = record_run(cfg, overrides, out_dir)
        finally:
            if job_lock is not None:
                job_lock.release()
    except TrainingInterrupted as e:
        if ddp.is_main_process():  # the other ranks stopped with it; rank 0 saved the checkpoint
            print(f"emotrain: {e}", file=sys.stderr)
        sys.exit(130)  # the shell's code for "ended by Ctrl-C"
    except (EmotrainError, OSError, OmegaConfBaseException) as e:
        message = error_message(e)
        if hc.mode == RunMode.MULTIRUN:
            # Hydra runs the remaining jobs of the batch, then main() reports this one line (no
            # traceback) and exits non-zero; Optuna records the trial as failed.
            raise SweepJobFailed(f"emotrain: error in job {hc.job.num} ({out_dir}): {message}") from e
        print(f"{_prefix()}error: {message}", file=sys.stderr, flush=True)
        if _full_error():
            raise  # the whole traceback
        sys.exit(USAGE_ERROR)
    return results["objective"]["value"]


def main() -> float | None:
    """Console script `emotrain` and `python -m emotrain`: Hydra's command line, errors as one line.

    Hydra prints its own errors (composition, the run directory) over several lines with the
    config search path; with its documented switch HYDRA_FULL_ERROR=1 it raises them instead,
    and they become one line here. A user's own HYDRA_FULL_ERROR=1 keeps the full traceback.
    """
    global _user_full_error
    sys.argv = hydra_argv(sys.argv)  # torchrun: a Hydra callback gives all ranks rank 0's run dir
    full_error = _user_full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return hydra_main()
    except SweepJobFailed as ex:  # already one line; Hydra ran the sweep's other jobs first
        if full_error:
            raise
        print(ex, file=sys.stderr, flush=True)
        sys.exit(1)
    except (CompactHydraException, OmegaConfBaseException) as ex:
        if full_error:
            raise
        _usage_exit(hydra_error_line(ex))
    except OSError as ex:
        # The task function turns its own OSErrors into one line, so this one is Hydra's:
        # creating the run directory, its log file or .hydra/.
        if full_error:
            raise
        _usage_exit(os_error_message(ex, run_dir=True))
    finally:
        _user_full_error = None
        if not full_error:
            os.environ.pop("HYDRA_FULL_ERROR", None)
