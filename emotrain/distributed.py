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
- Hydra: every rank runs the Hydra main; emotrain.callbacks.DistributedRunDir (added by
  `hydra_argv()` on the CLI side) gives all ranks rank 0's run directory.
- `DataParallel` puts what the training loop does differently under torchrun behind one
  object that does nothing in a single process.
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
    _INFO = DistInfo(
        rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device, backend=backend
    )
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
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
        else {"broadcast_buffers": False}
    )
    return DDP(model, device_ids=device_ids, find_unused_parameters=unused, **no_sync)


class DataParallel:
    """Everything the training loop does differently under torchrun, behind one object that does nothing in a
    single process, so the loop reads top to bottom without branches on the world size.

    - `wrap(model)`: DDP around the model (rebuilt when the trainable parameters change), else the model.
    - `no_sync(model, sync)`: gradients are all-reduced only on the micro-batch that steps the optimiser.
    - `share_of_batch(loss, n_local, n_global)`: each rank's mean loss weighted by its share of the global batch,
      so DDP's gradient average is the gradient of the global-batch mean (an uneven last batch included).
    - `average_grads(params)`: parameters outside DDP (the learned task weights) averaged over ranks.
    - `any(flag)`, `sum(loss_sum, seen)`: decisions and running sums that every rank takes together.
    - `running_sums(...)`, `seed_epoch(...)`: rank 0 carries a resumed epoch's sums; per-rank dropout streams.
    """

    def __init__(self, info: DistInfo):
        self.info = info
        self.world_size, self.rank, self.is_main = info.world_size, info.rank, info.is_main
        self._wrapped: torch.nn.Module | None = None
        self._trainable: tuple | None = None

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model
        trainable = tuple(p.requires_grad for p in model.parameters())
        if trainable != self._trainable:  # DDP reduces the gradients of the parameters trainable when built
            self._trainable, self._wrapped = trainable, wrap_model(model, self.info)
        return self._wrapped

    def no_sync(self, model: torch.nn.Module, sync: bool):
        return model.no_sync() if self.world_size > 1 and not sync else contextlib.nullcontext()

    def share_of_batch(self, loss: torch.Tensor, n_local: int, n_global: int) -> torch.Tensor:
        return loss if self.world_size == 1 else loss * (n_local * self.world_size / n_global)

    def average_grads(self, params) -> None:
        if self.world_size == 1:
            return
        for p in params:
            if p.grad is not None:
                all_reduce_sum(p.grad).div_(self.world_size)

    def any(self, flag: bool, device: torch.device | None = None) -> bool:
        return bool(flag) if self.world_size == 1 else any_rank(flag, device)

    def sum(self, loss_sum: torch.Tensor, seen: int) -> tuple[float, int]:
        """(loss sum, examples) over all ranks; every rank must call it."""
        if self.world_size == 1:
            return float(loss_sum), seen
        t = all_reduce_sum(
            torch.stack(
                [loss_sum.detach().double(), torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)]
            )
        )
        return float(t[0]), int(round(float(t[1])))

    def running_sums(self, loss_sum: float, seen: int, device: torch.device) -> tuple[torch.Tensor, int]:
        """An epoch's running (loss sum, examples), resumed from a checkpoint's global sums: rank 0 carries them."""
        if not self.is_main:
            return torch.zeros((), device=device), 0
        return torch.tensor(loss_sum, device=device), seen

    def seed_epoch(self, seed: int, epoch: int) -> None:
        """Per-rank dropout streams, reproducible per epoch (a resume at an epoch end is exact); nothing in one
        process."""
        if self.world_size > 1:
            import numpy as np

            torch.manual_seed(int(np.random.SeedSequence([seed, epoch, self.rank]).generate_state(1)[0]))


def resume_command(overrides: list[str], checkpoint, info: DistInfo | None = None) -> str:
    """The command line that continues a run from `checkpoint`: its own overrides with resume= replaced."""
    import shlex

    args = [a for a in overrides if not a.startswith("resume=")] + [f"resume={checkpoint}"]
    return launch_command(info) + " " + " ".join(shlex.quote(a) for a in args)


def launch_command(info: DistInfo | None = None) -> str:
    """How this run was launched, for "resume with: ..." hints: `python -m emotrain` or the torchrun equivalent."""
    info = info or get_info()
    if not info.distributed:
        return "python -m emotrain"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world_size))
    nodes = (
        f" --nnodes={info.world_size // local} --rdzv-endpoint=HOST:PORT" if local and local != info.world_size else ""
    )
    return f"torchrun --nproc_per_node={local}{nodes} -m emotrain"
