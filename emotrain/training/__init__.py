"""Training building blocks, usable from a user's own loop.

from emotrain.training import get_device, MixedPrecisionTrainer
device, use_amp = get_device()
mp = MixedPrecisionTrainer(device, "bf16" if use_amp else "fp32")
"""

from emotrain.training.precision import MixedPrecisionTrainer, get_device, resolve_precision

__all__ = ["MixedPrecisionTrainer", "get_device", "resolve_precision"]
