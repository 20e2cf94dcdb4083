"""AdamW with no weight decay on biases and LayerNorm, optional layer-wise lr decay. Reads conf/optim/."""

from __future__ import annotations

import torch
from torch import nn

from emotrain.config import check_range
from emotrain.errors import ConfigError
from emotrain.models.backbones import encoder_layers


def _no_decay(name: str, param: nn.Parameter) -> bool:
    # Biases and LayerNorm weights (1-D) are not decayed.
    return param.ndim < 2 or name.endswith(".bias") or "LayerNorm" in name or "layer_norm" in name


def _layer_id(name: str, num_layers: int) -> int:
    """0 = embeddings, 1..L = transformer blocks, L+1 = heads and everything else."""
    if name.startswith("encoder."):
        for token in (".layer.", ".layers."):
            if token in name:
                return int(name.split(token, 1)[1].split(".", 1)[0]) + 1
        if "embeddings" in name:
            return 0
        return num_layers  # e.g. a final norm on top of the encoder
    return num_layers + 1


def validate_optim_config(optim_cfg) -> None:
    if optim_cfg.name != "adamw":
        raise ConfigError(f"optim.name={optim_cfg.name}: only adamw is available")
    # Above 1 an AdamW step moves weights by more than their scale: the run diverges or learns nothing.
    check_range("optim.lr", optim_cfg.lr, gt=0, le=1)
    check_range("optim.head_lr", optim_cfg.head_lr, gt=0, le=1, optional=True)
    # AdamW decays by lr * weight_decay per step, and eps divides every step: far above 1 either one stalls or
    # wrecks training (exit 0 with an untrained model, or a "diverged" pointing at the wrong key).
    check_range("optim.weight_decay", optim_cfg.weight_decay, ge=0, le=1)
    check_range("optim.eps", optim_cfg.eps, gt=0, le=1)
    check_range("optim.layer_decay", optim_cfg.layer_decay, gt=0, le=1)
    betas = list(optim_cfg.betas)
    if len(betas) != 2:
        raise ConfigError(f"optim.betas={betas}: must be two numbers [beta1, beta2], e.g. [0.9, 0.999]")
    for i, beta in enumerate(betas):
        check_range(f"optim.betas[{i}]", beta, ge=0, lt=1)


def build_optimizer(
    model: nn.Module, optim_cfg, extra_params: list[nn.Parameter] = (), device: torch.device | None = None
) -> torch.optim.Optimizer:
    validate_optim_config(optim_cfg)
    num_layers = len(encoder_layers(model.encoder))
    head_lr = optim_cfg.head_lr or optim_cfg.lr
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        lid = _layer_id(name, num_layers)
        decay = 0.0 if _no_decay(name, p) else optim_cfg.weight_decay
        lr = head_lr if lid == num_layers + 1 else optim_cfg.lr * optim_cfg.layer_decay ** (num_layers + 1 - lid)
        g = groups.setdefault((lr, decay), {"params": [], "lr": lr, "weight_decay": decay})
        g["params"].append(p)
    param_groups = list(groups.values())
    if extra_params:  # e.g. learned task-uncertainty weights
        param_groups.append({"params": list(extra_params), "lr": head_lr, "weight_decay": 0.0})
    fused = bool(optim_cfg.fused) and device is not None and device.type in ("cuda", "cpu")
    return torch.optim.AdamW(
        param_groups, lr=optim_cfg.lr, betas=tuple(optim_cfg.betas), eps=optim_cfg.eps, fused=fused or None
    )
