"""Data-parallel training under torchrun: process group, rank helpers, DDP wrapping, Hydra run dir.

`torchrun --nproc_per_node=N -m emotrain ...` (or `python -m torch.distributed.run ...`)
starts N copies of the Hydra entry point with RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT in their environment; nothing else needs to be passed. `init_distributed()`
reads that environment and joins the process group: NCCL with one GPU per process
(`torch.cuda.set_device(LOCAL_RANK)`) when CUDA is available, gloo on CPU. Without those
variables (or WORLD_SIZE=1) every helper here is a no-op and nothing is initialised.

Semantics (see TrainingRecipe and LengthGroupedBatchSampler):

- `trainer.batch_size` is the per-process batch; one optimiser step sees
  batch_size * grad_accum_steps * world_size examples (`effective_batch_size` in metrics.json).
  Every rank builds the same global batch list from (seed, epoch) with the global batch
  size and takes every world_size-th example of each global batch, so a run on N processes
  visits exactly the batches of a single-process run with batch_size * N.
- Each rank's loss is scaled by (its examples * world_size / global batch examples), so DDP's
  gradient average equals the gradient of the global-batch mean even when the last batch
  does not split evenly (a rank with no example left runs one padded example at weight 0).
- Evaluation is sharded by batch (rank r evaluates eval batches r, r+N, ...) and the
  probabilities and per-batch losses are summed across ranks, then reduced in the
  single-process order: every rank gets the same metrics, identical to a single process.
- Only rank 0 writes (checkpoints, metrics.json, reports, trackers, status.json); every rank
  loads the checkpoint on resume.
- Hydra: every rank runs the Hydra main. `hydra_argv()` adds `DistributedRunDir`, a Hydra
  callback that, before Hydra creates the run directory, broadcasts rank 0's resolved
  `hydra.run.dir` to all ranks and makes the other ranks write nothing into it (no `.hydra/`,
  no log file; their console log shows errors only, prefixed `[rank N]`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("emotrain")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None  # None: not distributed

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_INFO: DistInfo | None = None


def env_world_size() -> int:
    """WORLD_SIZE from the launcher's environment (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def env_rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _single_process_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def init_distributed() -> DistInfo:
    """Join the torchrun process group (once; later calls return the same DistInfo).

    Single process (no WORLD_SIZE, or WORLD_SIZE=1): nothing is initialised, rank 0 of 1.
    """
    global _INFO
    if _INFO is not None and (_INFO.world_size == 1 or dist.is_initialized()):
        return _INFO
    world = env_world_size()
    if world <= 1:
        _INFO = DistInfo(device=_single_process_device())
        return _INFO
    if not dist.is_available():
        from emotrain.errors import ConfigError

        raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            from emotrain.errors import ConfigError

            raise ConfigError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA device(s) are visible: "
                "use --nproc_per_node <= the number of GPUs (or CUDA_VISIBLE_DEVICES= for CPU training with gloo)"
            )
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        try:
            dist.init_process_group(backend=backend, **kwargs)
        except TypeError:  # torch without device_id=
            dist.init_process_group(backend=backend)
    _INFO = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device, backend=backend)
    return _INFO


def get_info() -> DistInfo:
    """The current DistInfo without initialising anything (single process until init_distributed ran)."""
    if _INFO is not None and (_INFO.world_size == 1 or dist.is_initialized()):
        return _INFO
    return DistInfo(rank=env_rank(), world_size=1, device=_single_process_device())


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank: from the process group, else from the launcher's RANK (0 alone)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return env_rank()


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over all ranks, in place; returns it. (It must live on the backend's device.)"""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """True on every rank when `flag` is true on at least one (keeps ranks' control flow in step)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device or get_info().device)
    return bool(all_reduce_sum(t).item() > 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` of rank `src` on every rank (picklable objects)."""
    if not is_distributed():
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def barrier() -> None:
    if not is_distributed():
        return
    info = get_info()
    if info.backend == "nccl":
        dist.barrier(device_ids=[info.local_rank])
    else:
        dist.barrier()


@contextlib.contextmanager
def main_process_first():
    """Rank 0 runs the block first (e.g. fills a cache), the others after it: no duplicated work or write races."""
    if not is_distributed():
        yield
        return
    if not is_main_process():
        barrier()
    try:
        yield
    finally:
        if is_main_process():
            barrier()


def cleanup() -> None:
    """Leave the process group (no-op when none)."""
    global _INFO
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _INFO = None


def wrap_model(model: torch.nn.Module, info: DistInfo | None = None) -> torch.nn.Module:
    """DistributedDataParallel around `model` when world_size > 1, else `model` itself.

    Build it after the trainable set is final for the epoch: DDP only reduces the gradients
    of parameters that require grad when it is built. An encoder with an (unused) pooler needs
    find_unused_parameters; no module here keeps running statistics, so buffers are not broadcast.
    """
    info = info or get_info()
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    encoder = getattr(model, "encoder", None)
    pooler = getattr(encoder, "pooler", None) if encoder is not None else None
    unused = pooler is not None and any(p.requires_grad for p in pooler.parameters())
    device_ids = [info.local_rank] if info.device.type == "cuda" else None
    # Newer torch renames broadcast_buffers (per-forward buffer sync) to forward_sync_buffers.
    no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters else {"broadcast_buffers": False}
    return DDP(model, device_ids=device_ids, find_unused_parameters=unused, **no_sync)


def launch_command(info: DistInfo | None = None) -> str:
    """How this run was launched, for "resume with: ..." hints: `python -m emotrain` or the torchrun equivalent."""
    info = info or get_info()
    if not info.distributed:
        return "python -m emotrain"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    nodes = f" --nnodes={info.world_size // local} --rdzv-endpoint=HOST:PORT" if local and local != info.world_size else ""
    return f"torchrun --nproc_per_node={local}{nodes} -m emotrain"


# --------------------------------------------------------------------------- Hydra

CALLBACK_KEY = "emotrain_distributed"


def hydra_argv(argv: list[str]) -> list[str]:
    """argv for the Hydra entry point: under torchrun (WORLD_SIZE > 1) add the DistributedRunDir callback."""
    if env_world_size() <= 1 or any(a.lstrip("+").startswith(f"hydra.callbacks.{CALLBACK_KEY}") for a in argv):
        return argv
    return [*argv, f"++hydra.callbacks.{CALLBACK_KEY}._target_=emotrain.distributed.DistributedRunDir"]


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


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object


class DistributedRunDir(_HydraCallback):
    """Hydra callback (added by `hydra_argv` under torchrun): one run directory for all ranks.

    Runs before Hydra creates the run dir: joins the process group, resolves `hydra.run.dir`
    on rank 0 (`${now:...}` differs per process by microseconds) and broadcasts it; the other
    ranks use it verbatim, skip `.hydra/` (hydra.output_subdir=null) and log errors to the
    console only. Hydra still `mkdir`s the (same) directory on every rank: nothing else appears.
    """

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf, open_dict, read_write

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
