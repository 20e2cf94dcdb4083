"""Hydra callback for multiruns (conf/train.yaml: hydra.callbacks.sweep_summary) and config resolvers.

- Before the first job: a basic-sweeper sweep over cv.fold is checked against cv.k (a fold
  outside 0..k-1 or k < 2 stops the multirun with one line and exit status 2, before any
  job starts; each job checks its own config again).
- After a job that failed: a warning naming the job and pointing at `emotrain-summarize`.
- After the last job: the same summary as `emotrain-summarize SWEEP_DIR` (printed, plus
  the JSON/CSV files in the sweep dir). Turn off with hydra.callbacks.sweep_summary.enabled=false.

Hydra skips `on_multirun_end` when a job failed (the sweeper re-raises the job's error),
so `emotrain-summarize` is the source of truth for a sweep's results.

Importing this module registers the `emotrain.optuna_direction` resolver used by
conf/hparams_search/ (trainer.monitor_mode min|max -> Optuna's minimize|maximize).
Keep this module light: Hydra imports it in the launching process and in every worker.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from emotrain.config import choice

log = logging.getLogger("emotrain")


def _optuna_direction(mode: Any) -> str:
    value = choice(mode)
    directions = {"min": "minimize", "max": "maximize", "minimize": "minimize", "maximize": "maximize"}
    if value not in directions:
        raise ValueError(f"trainer.monitor_mode={value}: use min or max")
    return directions[value]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("emotrain.optuna_direction"):
        OmegaConf.register_new_resolver("emotrain.optuna_direction", _optuna_direction)


register_resolvers()


class SweepConfigError(CompactHydraException):
    """A sweep that cannot work as asked; Hydra prints the message as one line."""


class SweepJobFailed(CompactHydraException):
    """A multirun job stopped on a user error (EmotrainError); Hydra prints the message as one line.

    The job directory keeps status.json with the reason; emotrain-summarize lists the job.
    """


def _as_int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def check_fold_sweep(config: DictConfig) -> None:
    """Raise SweepConfigError when a basic-sweeper multirun asks for folds outside 0..cv.k-1 (or cv.k < 2)."""
    from emotrain.sweeps import FOLD_KEY, expand_basic_sweep, override_dict

    sweeper = config.hydra.sweeper
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return
    try:
        params = {str(k): str(sweeper.params[k]) for k in sweeper.params} if sweeper.get("params") else {}
        jobs = expand_basic_sweep(params, list(config.hydra.overrides.task))
    except Exception as e:  # glob sweeps and the like: the jobs check themselves
        log.debug("fold check skipped: %s", e)
        return
    cv = config.get("cv")
    base_kind = choice(cv.kind) if cv is not None else None
    small_k: dict[int, list[int]] = {}  # k -> job numbers
    bad_folds: dict[int, list[tuple[int, int]]] = {}  # k -> (fold, job number)
    for num, overrides in enumerate(jobs):
        d = override_dict(overrides)
        kind = d.get("cv", base_kind)
        if kind != "kfold":
            continue
        # The composed cv.k is only known when the cv group itself is not being swept.
        k = _as_int(d["cv.k"]) if "cv.k" in d else (_as_int(cv.k) if base_kind == "kfold" else None)
        fold = _as_int(d.get(FOLD_KEY, cv.fold if base_kind == "kfold" else None))
        if k is None:
            continue
        if k < 2:
            small_k.setdefault(k, []).append(num)
        elif fold is not None and not 0 <= fold < k:
            bad_folds.setdefault(k, []).append((fold, num))
    problems = []
    for k, nums in small_k.items():
        problems.append(f"cv.k={k} ({_jobs(nums)}): k-fold needs k >= 2")
    for k, pairs in bad_folds.items():
        folds = sorted({f for f, _ in pairs})
        problems.append(
            f"cv.fold={', '.join(map(str, folds))} ({_jobs([n for _, n in pairs])}) "
            f"{'is' if len(folds) == 1 else 'are'} outside 0..{k - 1} for cv.k={k}; sweep 'cv.fold=range(${{cv.k}})' "
            "or use sweep=kfold"
        )
    if problems:
        raise SweepConfigError("emotrain: error: " + "; ".join(problems) + " (no job was started)")


def _jobs(nums: Sequence[int]) -> str:
    return f"job{'s' if len(nums) > 1 else ''} {', '.join(map(str, nums))}"


class SweepCallback(Callback):
    """Checks fold sweeps up front, warns about failed jobs and summarises the multirun at its end."""

    def __init__(
        self,
        enabled: bool = True,
        metrics: Sequence[str] | None = None,
        mode: str | None = None,
        check_folds: bool = True,
    ) -> None:
        self.enabled = bool(enabled)
        self.metrics = [str(m) for m in (metrics or [])]
        self.mode = mode
        self.check_folds = bool(check_folds)
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Resolved once here: the same ${now:} values the sweeper uses (Hydra caches them per config).
        self.sweep_dir = Path(str(config.hydra.sweep.dir))
        if self.check_folds:
            try:
                check_fold_sweep(config)
            except SweepConfigError as e:
                # Hydra turns a callback's exceptions into warnings and carries on; SystemExit
                # is not an Exception, so this stops the multirun before its first job.
                print(e, file=sys.stderr, flush=True)
                raise SystemExit(2) from None

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.core.utils import JobStatus

        if config.hydra.mode != RunMode.MULTIRUN or job_return.status != JobStatus.FAILED:
            return
        sweep_dir = self.sweep_dir or config.hydra.sweep.dir
        error = getattr(job_return, "_return_value", None)
        error = getattr(error, "__cause__", None) or error
        log.warning(
            "job %s failed (%s: %s); Hydra skips the end-of-sweep summary when a job fails: run `emotrain-summarize "
            "%s` after the sweep",
            config.hydra.job.num,
            type(error).__name__,
            error,
            sweep_dir,
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not self.enabled:
            return
        from emotrain.summarize import SummaryError, summarize

        sweep_dir = self.sweep_dir or Path(str(config.hydra.sweep.dir))
        try:
            summary = summarize(sweep_dir, self.metrics or None, self.mode)
        except SummaryError as e:
            print(f"emotrain-summarize: {e}", flush=True)
            return
        except Exception as e:  # never fail a finished sweep over its summary
            print(
                f"emotrain-summarize: summary failed ({type(e).__name__}: {e}); run `emotrain-summarize {sweep_dir}`",
                flush=True,
            )
            return
        print(summary.text, flush=True)
        for path in summary.files:
            print(f"wrote {path}", flush=True)


class RunDirGuard(Callback):
    """One run per directory (emotrain.rundir), claimed before Hydra writes anything into it.

    A single run: the run directory is locked and must hold no earlier run's results unless this
    run resumes it. A multirun: the sweep directory must hold no earlier jobs' results (each job
    then claims its own directory in the task function). Refusals are one line, exit status 2,
    and leave the directory untouched. Under torchrun only rank 0 claims (all ranks share it).
    """

    def __init__(self) -> None:
        self.lock = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        import os

        from hydra.core.hydra_config import HydraConfig

        from emotrain.errors import EmotrainError
        from emotrain.rundir import claim_run_dir

        if os.environ.get("RANK", "0") != "0":
            return
        HydraConfig.instance().set_config(config)  # lets ${hydra:...} resolve inside run.dir
        run_dir = Path(str(OmegaConf.select(config, "hydra.run.dir")))  # ${now:} is cached: the dir Hydra creates
        try:
            self.lock = claim_run_dir(run_dir, resume=config.get("resume"), root_dir=Path.cwd())
        except (EmotrainError, OSError) as e:
            # Hydra turns a callback's exceptions into warnings; SystemExit stops before the run dir is touched.
            if isinstance(e, OSError):
                from emotrain.cli import os_error_message

                message = os_error_message(e, run_dir=True)
            else:
                message = str(e)
            print(f"emotrain: error: {message}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from emotrain.rundir import RESULTS

        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        held = sorted(str(p.relative_to(sweep_dir)) for p in sweep_dir.glob("*/*") if p.name in RESULTS)
        if held:
            shown = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            print(
                f"emotrain: error: sweep directory {sweep_dir} already holds runs ({shown}); a second sweep there "
                "would mix "
                "their results: choose a new hydra.sweep.dir (or leave it at its default)",
                file=sys.stderr,
                flush=True,
            )
            raise SystemExit(2)


# --------------------------------------------------------------------------- data parallel (torchrun)

CALLBACK_KEY = "emotrain_distributed"


def hydra_argv(argv: list[str]) -> list[str]:
    """argv for the Hydra entry point: under torchrun (WORLD_SIZE > 1) add the DistributedRunDir callback."""
    from emotrain.distributed import env_world_size

    if env_world_size() <= 1 or any(a.lstrip("+").startswith(f"hydra.callbacks.{CALLBACK_KEY}") for a in argv):
        return argv
    return [*argv, f"++hydra.callbacks.{CALLBACK_KEY}._target_=emotrain.callbacks.DistributedRunDir"]


def _quiet_job_logging(job_logging, rank: int) -> None:
    """Non-zero ranks: no file handlers (nothing written into the run dir), errors only, `[rank N]` prefix."""
    from omegaconf import open_dict, read_write

    if job_logging is None:
        return
    with read_write(job_logging), open_dict(job_logging):
        handlers = job_logging.get("handlers") or {}
        files = [name for name, h in handlers.items() if h is not None and "filename" in h]
        for name in files:
            del handlers[name]
        nodes = [job_logging.get("root")] + list((job_logging.get("loggers") or {}).values())
        for node in nodes:
            if node is not None and node.get("handlers") is not None:
                node.handlers = [h for h in node.handlers if h not in files]
        if job_logging.get("root") is not None:
            job_logging.root.level = "ERROR"  # rank 0 logs the same warnings
        for fmt in (job_logging.get("formatters") or {}).values():
            if fmt is not None and fmt.get("format"):
                fmt.format = f"[rank {rank}] " + str(fmt.format)


class DistributedRunDir(Callback):
    """Hydra callback (added by `hydra_argv` under torchrun): one run directory for all ranks.

    Runs before Hydra creates the run dir: joins the process group, resolves `hydra.run.dir`
    on rank 0 (`${now:...}` differs per process by microseconds) and broadcasts it; the other
    ranks use it verbatim, skip `.hydra/` (hydra.output_subdir=null) and log errors to the
    console only. Hydra still `mkdir`s the (same) directory on every rank: nothing else appears.
    """

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf, open_dict, read_write

        from emotrain.distributed import broadcast_object, init_distributed

        info = init_distributed()
        if not info.distributed:
            return
        run_dir = None
        if info.is_main:
            HydraConfig.instance().set_config(config)  # lets ${hydra:...} resolve inside run.dir
            run_dir = str(OmegaConf.select(config, "hydra.run.dir"))
        run_dir = broadcast_object(run_dir)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra.run.dir = run_dir
            if not info.is_main:
                config.hydra.output_subdir = None
                _quiet_job_logging(config.hydra.job_logging, info.rank)

    def on_multirun_start(self, config, **kwargs) -> None:
        from hydra.errors import CompactHydraException

        raise CompactHydraException(
            "emotrain: torchrun with -m/--multirun is not supported (every rank would run the whole sweep); "
            "launch one torchrun per job (e.g. from a shell loop)"
        )
