"""backbone=hf: any encoder in the local Hugging Face cache by its hub id, offline, for every supported family.

Each family (BERT, RoBERTa, DistilBERT, DeBERTa-v2/v3, ELECTRA) is a tiny random model with its own tokenizer
kind, saved into a temporary cache laid out as the hub's (tests/hf_cache.py). Each trains one step, exports to
ONNX (fp32 + int8, the export's self-check on) and predicts; the bundle's ONNX engine, with its own tokenizers-only
preprocessing, must give the PyTorch model's probabilities under the transformers tokenizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from hf_cache import FAMILIES, cache_family, repo_id  # noqa: E402

from conftest import TINY, subprocess_env, train  # noqa: E402
from emotrain.errors import ConfigError  # noqa: E402

# Families whose encoder takes token_type_ids (ONNX input too); DistilBERT has none, DeBERTa-v3 has no token types.
TAKES_TOKEN_TYPES = {"bert": True, "roberta": True, "electra": True, "distilbert": False, "deberta-v2": False}
TEXTS = ["I am so happy today!", "What a terrible, awful day.", "meh", "Is this real?? " * 30]


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("hf_home")
    for family in FAMILIES:
        cache_family(family, home)
    return home


@pytest.fixture
def in_cache(hf_home, monkeypatch) -> Path:
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return hf_home


def _overrides(family: str) -> list[str]:
    return [
        *[o for o in TINY if not o.startswith("backbone=")],
        "backbone=hf",
        f"backbone.name={repo_id(family)}",
        "backbone.max_length=48",
        "trainer.max_steps=1",
        "trainer.num_threads=1",
        "data.max_train_examples=32",
        "data.max_eval_examples=16",
        "report=false",
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_family_trains_exports_and_predicts(family, in_cache, tmp_path):
    import torch

    from emotrain.inference import export_bundle, load_engine
    from emotrain.inference.model_dir import load_exported_model

    results = train(_overrides(family), tmp_path)
    run = tmp_path / "run"
    assert results["global_steps"] == 1 and results["status"] == "completed"
    assert results["config"]["backbone"]["name"] == repo_id(family)

    bundle = export_bundle(run, fuse=True)  # fp32 + int8 through the fusion step, self-check at default tolerances
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["checks"]["fp32"]["passed"] and meta["checks"]["int8"]["passed"]
    assert ("token_type_ids" in meta["onnx"]["inputs"]) == TAKES_TOKEN_TYPES[family]
    # onnxruntime's optimizer fuses what it recognises; whatever it did, the outputs were checked against the
    # plain graph (else it was not applied) and the bundle against PyTorch above.
    fusion = meta["onnx"]["fusion"]
    assert fusion["applied"] or fusion["reason"]
    assert meta["backbone"] == repo_id(family)

    model, tokenizer, model_meta = load_exported_model(run / "model")
    batch = tokenizer(TEXTS, padding=True, truncation=True, max_length=48, return_tensors="pt")
    with torch.no_grad():
        want = model.probabilities(model(batch["input_ids"], batch["attention_mask"]))
    engine = load_engine(bundle, "onnx")
    scores, truncated = engine.predict_scores(TEXTS)
    for task in want:
        np.testing.assert_allclose(scores[task], want[task].numpy(), atol=1e-4)
    assert truncated.tolist() == [False, False, False, True]  # the long text is cut to max_length tokens
    int8 = load_engine(bundle, "onnx", quantized=True).predict_batch(TEXTS)
    assert len(int8) == len(TEXTS) and all(r["tasks"]["emotion"]["labels"] for r in int8)


def test_cached_revision_by_commit_hash(in_cache, tmp_path):
    """backbone.revision may name the cached commit itself."""
    from emotrain.models.backbones import hub_snapshot

    ref = in_cache / "hub" / f"models--{repo_id('bert').replace('/', '--')}" / "refs" / "main"
    commit = ref.read_text().strip()
    assert hub_snapshot(repo_id("bert"), commit).name == commit
    assert hub_snapshot(repo_id("bert")) == hub_snapshot(repo_id("bert"), commit)


def test_model_not_in_cache_is_one_line(in_cache):
    from emotrain.models.backbones import hub_snapshot

    with pytest.raises(ConfigError) as err:
        hub_snapshot("someone/not-cached-model")
    message = str(err.value)
    assert "\n" not in message
    assert str(in_cache / "hub") in message and "hf download someone/not-cached-model" in message
    with pytest.raises(ConfigError, match="revision v9"):
        hub_snapshot(repo_id("bert"), "v9")


def test_model_not_in_cache_on_the_command_line(hf_home, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain", "backbone=hf", "backbone.name=someone/not-cached-model"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path / "cache", HF_HOME=str(hf_home)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "not in the Hugging Face cache" in lines[0] and "hf download someone/not-cached-model" in lines[0]
    assert "Traceback" not in proc.stderr


def test_backbone_name_is_required_for_hf(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain", "backbone=hf"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path / "cache"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "backbone.name" in proc.stderr and "Traceback" not in proc.stderr


def test_local_path_that_is_a_hub_id_points_to_hf(tmp_path):
    from omegaconf import OmegaConf

    from emotrain.models.backbones import backbone_dir

    cfg = OmegaConf.create({"kind": "local", "path": "sentence-transformers/all-MiniLM-L6-v2"})
    with pytest.raises(ConfigError, match="use backbone=hf backbone.name=sentence-transformers/all-MiniLM-L6-v2"):
        backbone_dir(cfg, tmp_path)
