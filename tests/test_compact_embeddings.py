"""trainer.compact_embeddings: only the word-embedding rows of training tokens train, with the same result as
dense training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from conftest import QUICK, make_recipe, train
from emotrain.checkpointing import load_checkpoint, resolve_checkpoint
from emotrain.models.embeddings import CompactWordEmbedding, compact_word_embeddings

VOCAB, DIM, PAD = 50, 8, 0


class Encoder(nn.Module):
    """The least an encoder needs here: input embeddings behind the Hugging Face accessors."""

    def __init__(self, tie: bool = False):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM, padding_idx=PAD)
        self.out = nn.Linear(DIM, VOCAB, bias=False)
        if tie:
            self.out.weight = self.embed.weight

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, module):
        self.embed = module

    def forward(self, ids):
        return self.out(torch.tanh(self.embed(ids))).logsumexp(-1).mean()


def train_steps(encoder: Encoder, batches, weight_decay: float, fused: bool) -> None:
    opt = torch.optim.AdamW(encoder.parameters(), lr=0.05, weight_decay=weight_decay, fused=fused)
    for compact in (m for m in encoder.modules() if isinstance(m, CompactWordEmbedding)):
        compact.follow_weight_decay(opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - 0.1 * step)  # lr changes every step
    for ids in batches:
        encoder(ids).backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("fused", [False, True])
def test_compact_training_gives_the_dense_weights(weight_decay, fused):
    torch.manual_seed(0)
    batches = [torch.randint(1, 20, (4, 6)) for _ in range(6)]
    for b in batches:
        b[:, -2:] = PAD  # padded positions: the padding row never trains
    dense = Encoder()
    compact = Encoder()
    compact.load_state_dict(dense.state_dict())
    initial = dense.embed.weight.detach().clone()
    module = compact_word_embeddings(compact, [b.flatten().numpy() for b in batches])
    assert isinstance(module, CompactWordEmbedding) and compact.embed is module
    assert module.trained.shape == (len(torch.unique(torch.cat(batches))) - 1, DIM)  # minus the padding row

    train_steps(dense, batches, weight_decay, fused)
    train_steps(compact, batches, weight_decay, fused)

    merged = compact.state_dict()["embed.weight"]
    assert set(compact.state_dict()) == set(dense.state_dict())
    torch.testing.assert_close(merged, dense.embed.weight.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compact.out.weight, dense.out.weight, rtol=1e-5, atol=1e-6)
    untouched = torch.arange(20, VOCAB)  # never in a batch: only weight decay moves them
    assert torch.equal(merged[untouched], initial[untouched]) == (weight_decay == 0)
    # Looking up any token (trained, decayed-only, padding) gives the dense model's rows.
    ids = torch.arange(VOCAB).view(5, 10)
    for mode in (True, False):
        compact.train(mode)
        torch.testing.assert_close(compact.embed(ids), dense.embed(ids), rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_uses_the_plain_weight():
    torch.manual_seed(1)
    plain = Encoder()
    compact = Encoder()
    module = compact_word_embeddings(compact, [np.array([3, 4, 5, 4])])
    assert module.trained.shape == (3, DIM)
    compact.load_state_dict(plain.state_dict())  # a plain checkpoint loads into the compact model
    torch.testing.assert_close(compact.state_dict()["embed.weight"], plain.embed.weight.detach())
    torch.testing.assert_close(module.trained.detach(), plain.embed.weight.detach()[[3, 4, 5]])
    restored = Encoder()
    restored.load_state_dict(compact.state_dict())  # and the compact model's state dict loads into a plain one
    torch.testing.assert_close(restored.embed.weight, plain.embed.weight)
    with pytest.raises(RuntimeError, match="size mismatch for embed.weight"):
        compact.load_state_dict({**plain.state_dict(), "embed.weight": torch.zeros(VOCAB + 1, DIM)})


def test_shared_word_embeddings_are_left_dense():
    tied = Encoder(tie=True)
    assert compact_word_embeddings(tied, [np.array([1, 2])]) is None
    assert type(tied.embed) is nn.Embedding


def test_recipe_trains_the_same_model_with_and_without(tmp_path):
    """A real short training (tiny BERT, weight decay, fused AdamW): same losses and weights either way."""
    common = ["trainer.epochs=2", "optim.fused=true", "optim.weight_decay=0.1", "checkpoint=none", "report=false"]
    on = make_recipe(common, tmp_path / "on")  # set up and train one after the other: setup seeds the RNG
    assert isinstance(on.model.encoder.get_input_embeddings(), CompactWordEmbedding)
    rows = on.model.encoder.get_input_embeddings().rows
    assert len(rows) < on.model.encoder.config.vocab_size
    assert set(rows.tolist()) == set(np.unique(np.concatenate(on.train_data.input_ids)).tolist()) - {on.pad_id}
    on.train()
    off = make_recipe([*common, "trainer.compact_embeddings=false"], tmp_path / "off")
    assert type(off.model.encoder.get_input_embeddings()) is nn.Embedding
    off.train()
    for a, b in zip(on.state.history, off.state.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val"]["loss"] == pytest.approx(b["val"]["loss"], rel=1e-5)
    on_state, off_state = on.model.state_dict(), off.model.state_dict()
    assert on_state.keys() == off_state.keys()
    for key in off_state:
        torch.testing.assert_close(on_state[key], off_state[key], rtol=1e-4, atol=1e-6, msg=key)


def test_only_when_the_embeddings_train(tmp_path):
    for freeze in ("partial", "progressive", "full"):
        r = make_recipe([f"freeze={freeze}", *(["freeze.layers=1"] if freeze == "partial" else [])], tmp_path / freeze)
        assert type(r.model.encoder.get_input_embeddings()) is nn.Embedding, freeze


def test_checkpoints_hold_the_plain_weight(tmp_path):
    """A checkpoint of a compact run loads into a plain model and back (exact resumes: tests/test_resume.py)."""
    train([*QUICK, "checkpoint=default", "optim.weight_decay=0.1"], tmp_path / "a")
    path = resolve_checkpoint(tmp_path / "a" / "run")
    saved = torch.load(path, map_location="cpu", weights_only=False)["model"]
    key = "encoder.embeddings.word_embeddings.weight"
    assert key in saved and not any(k.endswith(".trained") for k in saved)
    for name, overrides in (("compact", []), ("plain", ["trainer.compact_embeddings=false"])):
        r = make_recipe(["checkpoint=default", *overrides], tmp_path / name)
        load_checkpoint(path, r.model, r.optimizer if name == "compact" else None, r.scheduler)
        torch.testing.assert_close(r.model.state_dict()[key], saved[key])


def test_weight_decay_follows_the_current_lr_after_a_resumed_optimizer_state():
    """optimizer.load_state_dict replaces the param-group dicts: the decay must read the live lr."""
    encoder = Encoder()
    module = compact_word_embeddings(encoder, [np.array([1, 2])])
    opt = torch.optim.AdamW(encoder.parameters(), lr=0.1, weight_decay=0.5)
    module.follow_weight_decay(opt)
    opt.load_state_dict(opt.state_dict())
    opt.param_groups[0]["lr"] = 0.2
    before = module.fixed.clone()
    encoder(torch.tensor([[1, 2]])).backward()
    opt.step()
    torch.testing.assert_close(module.fixed, before * (1 - 0.2 * 0.5))
