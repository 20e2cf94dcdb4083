"""Learning-rate schedules with warmup (transformers' implementations). Reads conf/scheduler/."""

from __future__ import annotations

import math

from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_cosine_with_hard_restarts_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from emotrain.config import check_range, choice
from emotrain.errors import ConfigError


def validate_scheduler_config(sched_cfg) -> None:
    check_range("scheduler.warmup_ratio", sched_cfg.warmup_ratio, ge=0, lt=1)
    check_range("scheduler.warmup_steps", sched_cfg.warmup_steps, ge=0, integer=True, optional=True)
    if choice(sched_cfg.kind) == "cosine_restarts":
        check_range("scheduler.num_cycles", sched_cfg.num_cycles, ge=1, integer=True)


def warmup_steps(sched_cfg, total_steps: int) -> int:
    if sched_cfg.warmup_steps is not None:
        if sched_cfg.warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps={sched_cfg.warmup_steps}: must be >= 0")
        if sched_cfg.warmup_steps > 0 and sched_cfg.warmup_steps >= total_steps:
            raise ConfigError(
                f"scheduler.warmup_steps={sched_cfg.warmup_steps} is not below this run's {total_steps} optimiser "
                "steps, "
                "so the learning rate would never reach optim.lr; lower it or use scheduler.warmup_ratio"
            )
        return int(sched_cfg.warmup_steps)
    if not 0.0 <= sched_cfg.warmup_ratio < 1.0:
        raise ConfigError(f"scheduler.warmup_ratio={sched_cfg.warmup_ratio}: must be in [0, 1)")
    return int(math.ceil(sched_cfg.warmup_ratio * total_steps))


def build_scheduler(optimizer, sched_cfg, total_steps: int):
    kind = choice(sched_cfg.kind)
    warm = warmup_steps(sched_cfg, total_steps)
    if kind == "linear":
        return get_linear_schedule_with_warmup(optimizer, warm, total_steps)
    if kind == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, warm, total_steps)
    if kind == "constant":
        return get_constant_schedule_with_warmup(optimizer, warm)
    if kind == "cosine_restarts":
        if sched_cfg.num_cycles < 1:
            raise ConfigError(f"scheduler.num_cycles={sched_cfg.num_cycles}: must be >= 1")
        return get_cosine_with_hard_restarts_schedule_with_warmup(
            optimizer, warm, total_steps, num_cycles=sched_cfg.num_cycles
        )
    raise ConfigError(f"scheduler.kind={kind}: unknown; use linear, cosine, constant or cosine_restarts")
