"""Token-id cache and frozen-encoder feature cache: same results, reused across runs, safe to damage."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY, compose
from emotrain.recipe import TrainingRecipe, run
from emotrain.training.batching import encode_texts
from emotrain.training.caches import FeatureCache, TokenCache

FROZEN = [
    *TINY,
    "freeze=full",
    "trainer.epochs=2",
    "data.max_train_examples=96",
    "data.max_eval_examples=48",
    "checkpoint=none",
    "report=false",
    "optim.lr=1e-2",
]


def _run(overrides, tmp_path, cache_dir):
    cfg = compose(overrides, tmp_path)
    cfg.paths.cache_dir = str(cache_dir)
    return run(cfg, overrides)


def test_frozen_feature_cache_gives_the_same_metrics(tmp_path, caplog):
    cache = tmp_path / "cache"
    plain = _run([*FROZEN, "freeze.feature_cache=false"], tmp_path / "a", cache)
    with caplog.at_level("INFO"):
        cached = _run(FROZEN, tmp_path / "b", cache)
    assert any("computed" in r.getMessage() for r in caplog.records)
    for key in ("loss", "macro_f1", "emotion/loss", "sentiment/accuracy"):
        assert cached["test"][key] == pytest.approx(plain["test"][key], abs=1e-4), key
    assert [h["val"]["loss"] for h in cached["history"]] == pytest.approx(
        [h["val"]["loss"] for h in plain["history"]], abs=1e-4
    )
    assert list((cache / "features").rglob("*.npz")), "features were not written to the cache"


def test_feature_cache_is_reused_by_a_second_run(tmp_path, caplog):
    cache = tmp_path / "cache"
    _run(FROZEN, tmp_path / "a", cache)
    caplog.clear()
    with caplog.at_level("INFO", logger="emotrain"):
        _run([*FROZEN, "seed=42", "optim.lr=5e-3"], tmp_path / "b", cache)  # heads' lr changes nothing upstream
    lines = [r.getMessage() for r in caplog.records if "frozen-encoder features" in r.getMessage()]
    assert lines and all(line.endswith(" 0 computed") for line in lines), lines


def test_feature_cache_key_changes_with_the_encoder(tmp_path):
    r1 = TrainingRecipe(compose(FROZEN, tmp_path / "a")).setup()
    cfg = compose([*FROZEN, "seed=3"], tmp_path / "b")  # another random init of the tiny encoder
    r2 = TrainingRecipe(cfg).setup()
    assert not np.allclose(r1.features["train"], r2.features["train"])


def test_feature_cache_recomputes_a_damaged_chunk(tmp_path):
    calls = []

    def compute(idx):
        calls.append(list(idx))
        return np.ones((len(idx), 4), dtype=np.float32) * np.array(idx)[:, None]

    cache = FeatureCache(tmp_path, "k" * 64)
    feats, n = cache.lookup(["a", "b", "c"], compute)
    assert n == 3 and feats[2, 0] == 2
    chunk = next((tmp_path / "features").rglob("*.npz"))
    chunk.write_bytes(chunk.read_bytes()[:20])  # truncated by a crash elsewhere
    feats, n = FeatureCache(tmp_path, "k" * 64).lookup(["a", "b", "c"], compute)
    assert n == 3 and feats[1, 0] == 1


def test_token_cache_round_trip_and_reuse(tmp_path):
    from transformers import AutoTokenizer

    from emotrain.models.backbones import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    texts = ["I am so happy today!", "this is awful", "", "ok"]
    cache = TokenCache(tmp_path)
    first = cache.encode(tok, texts, 16, encode_texts)
    calls = []

    def fail_if_called(*a):
        calls.append(a)
        return encode_texts(*a)

    second = cache.encode(tok, texts, 16, fail_if_called)
    assert not calls, "second encode did not come from the cache"
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    assert cache.encode(tok, texts, 8, fail_if_called) and calls, "max_length must be part of the key"
