"""Device and mixed-precision handling. Reads conf/precision/.

Step order for mixed precision: scale -> backward -> unscale -> clip -> step -> update.
"""

from __future__ import annotations

import contextlib
import logging
from functools import lru_cache

import torch

from emotrain.config import choice

log = logging.getLogger(__name__)


def get_device() -> tuple[torch.device, bool]:
    """(device, use_amp): CUDA with AMP when available, else CPU (AMP decided by cpu_supports_bf16)."""
    if torch.cuda.is_available():
        return torch.device("cuda"), True
    return torch.device("cpu"), cpu_supports_bf16()


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = fh.read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def resolve_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """Effective precision for a request on a device, and a warning when it differs."""
    requested = choice(requested)
    if device.type == "cuda":
        if requested == "auto":
            return "fp16", None
        if requested == "bf16" and not torch.cuda.is_bf16_supported():
            return "fp16", "precision=bf16: this GPU has no bf16 support; running fp16 with a GradScaler instead"
        return requested, None
    if requested == "auto":
        return ("bf16" if cpu_supports_bf16() else "fp32"), None
    if requested == "fp16":
        alt = "bf16" if cpu_supports_bf16() else "fp32"
        return alt, f"precision=fp16 is not supported on CPU; running {alt} instead"
    if requested == "bf16" and not cpu_supports_bf16():
        return "bf16", "precision=bf16: this CPU has no native bf16; it will run, but likely slower than fp32"
    return requested, None


class MixedPrecisionTrainer:
    """autocast + GradScaler, with the step order mixed-precision training requires.

    with mp.autocast():
        loss = model(...)
    mp.scale_loss(loss).backward()
    grad_norm = mp.step(optimizer, params, max_grad_norm)   # unscale -> clip -> step
    mp.update()                                             # scaler update
    """

    def __init__(self, device: torch.device, precision: str):
        self.device = device
        self.precision = precision
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        # Only fp16 needs loss scaling: bf16 has fp32's exponent range.
        self.scaler = torch.amp.GradScaler(device.type, enabled=(precision == "fp16"))
        self.skipped_steps = 0

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def step(self, optimizer, params, max_grad_norm: float | None) -> torch.Tensor | None:
        """Unscale, clip, step. Returns the pre-clip gradient norm (None when not clipping)."""
        self.scaler.unscale_(optimizer)
        grad_norm = None
        if max_grad_norm is not None and max_grad_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        scale_before = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(optimizer)
        self._scale_before = scale_before
        return grad_norm

    def update(self) -> bool:
        """Update the loss scale. Returns True when the step just taken was skipped (inf/nan grads)."""
        if not self.scaler.is_enabled():
            return False
        self.scaler.update()
        skipped = self.scaler.get_scale() < self._scale_before
        self.skipped_steps += int(skipped)
        return skipped

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))
