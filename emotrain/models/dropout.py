"""Dropout with a cheaper random source for CPU training (`trainer.fast_dropout`).

torch's CPU dropout draws one mt19937 number per element, which on short batches costs
more than the attention softmax and all the layer norms together (bench/train_throughput.py
shows the speed-up). Here the mask comes from numpy's SFC64 generator, one 64-bit word per
four elements: each 16-bit lane keeps its element unless it falls below p * 65536, so the
drop probability is p rounded to 1/65536 (0.1 -> 0.100006). The generator is seeded from
torch's default generator on every call, so `torch.manual_seed` and saved torch RNG states
still make runs reproducible and resumable. On other devices torch's own dropout runs.

Also registers `emotrain_eager`, eager attention whose attention-probability dropout uses
the same mask source; `use_fast_dropout` switches an encoder over to it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FAST_EAGER = "emotrain_eager"


def _keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    n = int(np.prod(shape))
    seed = int(torch.randint(0, 2**62, (1,)))  # tie the mask stream to torch's RNG state
    words = np.random.Generator(np.random.SFC64(seed)).bit_generator.random_raw((n + 3) // 4)
    lanes = torch.from_numpy(words.view(np.int16)[:n]).view(shape)  # uniform over [-32768, 32767]
    return lanes >= (-32768 + round(p * 65536))


class _MaskedScale(torch.autograd.Function):
    """y = x * keep / (1 - p); saves only the boolean mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


def fast_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or not 0.0 < p < 1.0:
        return nn.functional.dropout(x, p, training)
    return _MaskedScale.apply(x, _keep_mask(x.shape, p), 1.0 / (1.0 - p))


class FastDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_dropout(x, self.p, self.training)


def _fast_eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention (BERT's eager_attention_forward) with fast_dropout on the probabilities."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = fast_dropout(nn.functional.softmax(weights, dim=-1), dropout, module.training)
    out = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return out, weights


def _register() -> None:
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import eager_mask

    AttentionInterface.register(FAST_EAGER, _fast_eager_attention)
    AttentionMaskInterface.register(FAST_EAGER, eager_mask)


_register()


def use_fast_dropout(model: nn.Module) -> int:
    """Swap every nn.Dropout in `model` for FastDropout and eager attention for emotrain_eager.

    Returns the number of dropout modules swapped. Parameters and outputs in eval mode are
    unchanged; only the random masks drawn in training mode differ from torch's.
    """
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p))
                swapped += 1
    for sub in model.modules():
        config = getattr(sub, "config", None)
        if config is not None and getattr(config, "_attn_implementation", None) == "eager":
            config._attn_implementation = FAST_EAGER
    return swapped
