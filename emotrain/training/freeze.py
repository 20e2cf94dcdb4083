"""Which encoder parameters train: none, partial, full or progressive freezing. Reads conf/freeze/."""

from __future__ import annotations

from torch import nn

from emotrain.config import check_range, choice
from emotrain.errors import ConfigError
from emotrain.models.backbones import encoder_embeddings, encoder_layers


def validate_freeze_config(freeze_cfg) -> None:
    """freeze.* before any work; the depth of freeze.layers is checked once the encoder is built (validate_freeze)."""
    mode = choice(freeze_cfg.mode)
    if mode == "partial":
        check_range("freeze.layers", freeze_cfg.layers, ge=0, integer=True)
    if mode == "progressive":
        check_range("freeze.every", freeze_cfg.every, ge=1, integer=True)


def validate_freeze(freeze_cfg, num_layers: int) -> None:
    mode = choice(freeze_cfg.mode)
    if mode == "partial" and not 0 <= freeze_cfg.layers <= num_layers:
        raise ConfigError(
            f"freeze.layers={freeze_cfg.layers}: the encoder has {num_layers} layers; use 0..{num_layers}"
        )
    if mode == "progressive" and freeze_cfg.every < 1:
        raise ConfigError(f"freeze.every={freeze_cfg.every}: must be >= 1")


def _set(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


def apply_freeze(model, freeze_cfg, epoch: int) -> int:
    """Set requires_grad for this epoch (0-based). Returns the number of trainable parameters."""
    mode = choice(freeze_cfg.mode)
    encoder = model.encoder
    layers = encoder_layers(encoder)
    _set(model, True)
    if mode == "partial":
        _set(encoder_embeddings(encoder), False)
        for layer in layers[: freeze_cfg.layers]:
            _set(layer, False)
    elif mode == "full":
        _set(encoder, False)
    elif mode == "progressive":
        _set(encoder, False)
        unfrozen = min(len(layers), epoch // freeze_cfg.every)
        for layer in layers[len(layers) - unfrozen :]:
            _set(layer, True)
    elif mode != "none":
        raise ConfigError(f"freeze.mode={mode}: unknown")
    return trainable_parameters(model)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
