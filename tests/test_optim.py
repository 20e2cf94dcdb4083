"""conf/optim (emotrain/training/optim.py): parameter groups, weight decay and layer-wise lr decay."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from emotrain.config import OptimConfig
from emotrain.data.types import TaskSpec


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def no_dropout(model) -> None:
    """The tiny BERT has its own dropout (p=0.1) in embeddings, attention and outputs."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def test_layer_wise_lr_decay_sets_per_layer_learning_rates():
    from transformers import BertConfig, BertModel

    from emotrain.models.multitask import MultiTaskModel
    from emotrain.training.optim import build_optimizer

    torch.manual_seed(0)
    enc = BertModel(
        BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32),
        add_pooling_layer=False,
    )
    model = MultiTaskModel(enc, [TaskSpec("emotion", ("a", "b", "c"), False)])

    def lrs(decay: float) -> dict[str, tuple[float, float]]:
        cfg = OmegaConf.structured(OptimConfig(lr=1e-3, weight_decay=0.01, layer_decay=decay, fused=False))
        opt = build_optimizer(model, cfg)
        by_id = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
        return {n: by_id[id(p)] for n, p in model.named_parameters()}

    got = lrs(0.5)
    for name, (lr, wd) in got.items():
        if name.startswith("encoder.embeddings."):
            assert lr == pytest.approx(1e-3 * 0.5**3), name
        elif name.startswith("encoder.encoder.layer.0."):
            assert lr == pytest.approx(1e-3 * 0.5**2), name
        elif name.startswith("encoder.encoder.layer.1."):
            assert lr == pytest.approx(1e-3 * 0.5), name
        else:
            assert name.startswith("heads."), name
            assert lr == pytest.approx(1e-3), name
        # No weight decay on biases and LayerNorm weights.
        assert wd == (0.0 if name.endswith(".bias") or "LayerNorm" in name else 0.01), name
    assert all(lr == pytest.approx(1e-3) for lr, _ in lrs(1.0).values())  # 1.0 = off
