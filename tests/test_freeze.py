"""conf/freeze (emotrain/training/freeze.py): which parameters train, checked with real short trainings."""

from __future__ import annotations

import logging

import pytest
import torch

from conftest import make_recipe
from emotrain.errors import ConfigError


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def no_dropout(model) -> None:
    """The tiny BERT has its own dropout (p=0.1) in embeddings, attention and outputs."""
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


# ============================================================================ freeze


def _frozen_prefixes(mode: str) -> tuple[str, ...]:
    return {
        "none": (),
        "partial": ("encoder.embeddings.", "encoder.encoder.layer.0."),  # embeddings + first freeze.layers=1
        "full": ("encoder.",),
    }[mode]


@pytest.mark.parametrize("mode", ["none", "partial", "full"])
def test_frozen_parameters_do_not_change_after_an_optimiser_step(mode, tmp_path):
    r = make_recipe(
        [
            f"freeze={mode}",
            *(["freeze.layers=1"] if mode == "partial" else []),
            "trainer.max_steps=1",
            "optim.lr=1e-2",
            "scheduler=constant",
            "scheduler.warmup_steps=0",
            "data.max_train_examples=32",
        ],
        tmp_path,
    )
    before = snapshot(r.model)
    r.train()
    assert r.state.global_step == 1
    frozen_prefixes = _frozen_prefixes(mode)
    frozen, trained = [], []
    for name, p in r.model.named_parameters():
        is_frozen = name.startswith(frozen_prefixes) if frozen_prefixes else False
        (frozen if is_frozen else trained).append(name)
        if is_frozen:
            assert torch.equal(p.detach(), before[name]), f"{name} is frozen under freeze={mode} but changed"
        else:
            assert not torch.equal(p.detach(), before[name]), f"{name} trains under freeze={mode} but did not change"
    assert trained, "something must train"
    if mode != "none":
        assert frozen
    # The logged/recorded trainable count is exactly the non-frozen parameters.
    expected = sum(p.numel() for n, p in r.model.named_parameters() if n in trained)
    assert r.state.history[-1]["trainable_params"] == expected


def test_partial_freeze_layers_out_of_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="freeze.layers=3"):
        make_recipe(["freeze=partial", "freeze.layers=3"], tmp_path)  # the tiny encoder has 2 layers


def test_progressive_unfreezing_grows_trainable_count_on_schedule(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emotrain")
    # 16 examples, batch 16: one optimiser step per epoch.
    r = make_recipe(
        ["freeze=progressive", "freeze.every=2", "trainer.epochs=6", "data.max_train_examples=16", "optim.lr=1e-2"],
        tmp_path,
    )
    layers = r.model.encoder.encoder.layer
    per_layer = sum(p.numel() for p in layers[0].parameters())
    heads = sum(p.numel() for p in r.model.heads.parameters())
    assert sum(p.numel() for p in layers[1].parameters()) == per_layer

    top_before = snapshot(layers[1])
    r.train()
    counts = [h["trainable_params"] for h in r.state.history]
    # every=2: epochs 1-2 heads only, 3-4 + top layer, 5-6 + both layers; embeddings stay frozen.
    unfrozen = [0, 0, 1, 1, 2, 2]
    assert counts == [heads + k * per_layer for k in unfrozen]
    # Logged once per epoch.
    logged = [rec.getMessage() for rec in caplog.records if "trainable parameters" in rec.getMessage()]
    assert len(logged) == 6
    assert (
        logged[0] == f"epoch 1: {counts[0]} trainable parameters"
        and logged[-1] == f"epoch 6: {counts[-1]} trainable parameters"
    )
    # And it really trained: the top layer moved once unfrozen.
    assert any(not torch.equal(p.detach(), top_before[n]) for n, p in layers[1].named_parameters())
