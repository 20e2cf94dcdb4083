"""ONNX bundle export: layout, bundle.json, fp32 vs PyTorch, int8 agreement, thresholds, self-check, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from test_inference import assert_same_thresholds, exported_bundle, one_torch_thread, trained_run  # noqa: E402, F401  (shared, trained once per session)

from emotrain.data.types import TaskSpec  # noqa: E402
from emotrain.errors import EmotrainError  # noqa: E402
from emotrain.inference import (  # noqa: E402
    ExportCheckError,
    export_bundle,
    onnx_export,  # noqa: E402
)


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory) -> Path:
    return trained_run("sample", tmp_path_factory)


@pytest.fixture(scope="module")
def goemotions_run(tmp_path_factory) -> Path:
    return trained_run("goemotions", tmp_path_factory)


def _random_batches(vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for batch, seq in ((1, 1), (3, 17), (8, 64), (2, 5)):
        ids = rng.integers(1000, vocab, size=(batch, seq), dtype=np.int64)
        ids[:, 0] = 101
        mask = np.ones_like(ids)
        if seq > 2:
            mask[0, seq // 2 :] = 0  # padding inside the batch
        yield ids, mask


@pytest.mark.parametrize("kind", ["sample", "goemotions"])
def test_bundle_layout_and_metadata(kind, tmp_path_factory):
    import onnx

    bundle = exported_bundle(kind, tmp_path_factory)
    run = bundle.parent
    assert bundle == run / "bundle"  # default out for a run directory
    for name in ("bundle.json", "model.onnx", "model.int8.onnx", "tokenizer.json", "tokenizer_config.json"):
        assert (bundle / name).is_file(), name
    assert not (bundle / "model.safetensors").exists()  # slim by default
    assert not [p for p in run.iterdir() if p.name.startswith(".bundle")]  # staging removed
    assert (bundle / "model.int8.onnx").stat().st_size < 0.5 * (bundle / "model.onnx").stat().st_size

    meta = json.loads((bundle / "bundle.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    best = json.loads((run / "checkpoints" / "best.json").read_text())["path"]
    assert meta["format"] == "emotrain-bundle" and meta["format_version"] == 1
    assert meta["tasks"] == metrics["tasks"]
    assert meta["primary_task"] == "emotion"
    assert_same_thresholds(meta["thresholds"], metrics["thresholds"])
    if kind == "goemotions":
        assert meta["thresholds_source"].endswith("metrics.json")
    else:
        assert meta["thresholds"] == {} and meta["thresholds_source"] == "none (no multi-label task)"
    assert meta["preprocess"] == metrics["config"]["data"]["preprocess"]
    assert meta["max_length"] == metrics["config"]["backbone"]["max_length"] == 64
    assert meta["tokenizer"]["file"] == "tokenizer.json" and meta["tokenizer"]["pad_token_id"] == 0
    assert Path(meta["source_checkpoint"]).name == best
    assert meta["git"] == metrics["git"] or meta["git"]["commit"] == metrics["git"]["commit"]
    assert meta["versions"]["torch"] and meta["export_versions"]["onnxruntime"] and meta["export_versions"]["onnx"]
    assert meta["onnx"]["opset"] == 17 and meta["onnx"]["outputs"] == [t["name"] for t in metrics["tasks"]]
    assert meta["onnx"]["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert meta["onnx"]["fusion"] is None  # fuse=false by default
    assert "Attention" not in {n.op_type for n in onnx.load(str(bundle / "model.onnx")).graph.node}

    checks = meta["checks"]
    assert checks["samples"] >= 30
    assert checks["fp32"]["max_abs_diff_logits"] < 1e-4 and checks["fp32"]["passed"]
    assert (
        checks["int8"]["passed"]
        and checks["int8"]["decision_agreement"]
        >= checks["int8"]["min_agreement"]
        == onnx_export.DEFAULT_MIN_AGREEMENT
        == 0.9
    )
    print(
        f"{kind}: fp32 max|diff| {checks['fp32']['max_abs_diff_logits']:.2e}, int8 agreement "
        f"{checks['int8']['decision_agreement']:.1%}"
    )

    # Graph: dynamic batch and sequence axes, one logits output per task, named after it.
    model = onnx.load(str(bundle / "model.onnx"))
    onnx.checker.check_model(model)
    for inp in model.graph.input:
        assert [d.dim_param for d in inp.type.tensor_type.shape.dim] == ["batch", "sequence"], inp.name
    outs = {o.name: o for o in model.graph.output}
    for task in metrics["tasks"]:
        dims = outs[task["name"]].type.tensor_type.shape.dim
        assert dims[0].dim_param == "batch" and dims[1].dim_value == len(task["labels"])


def test_fp32_onnx_matches_pytorch_and_int8_agrees(goemotions_run, tmp_path_factory):
    """Independent of the export's own check: other shapes, raw onnxruntime vs the run's model/ export."""
    import onnxruntime as ort
    import torch

    from emotrain.inference.model_dir import load_exported_model

    bundle = exported_bundle("goemotions", tmp_path_factory)
    model, tokenizer, meta = load_exported_model(goemotions_run / "model")
    thresholds = json.loads((bundle / "bundle.json").read_text())["thresholds"]
    fp32 = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(bundle / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    names = [t["name"] for t in meta["tasks"]]
    worst = 0.0
    a32: dict = {n: [] for n in names}
    a8: dict = {n: [] for n in names}
    for ids, mask in _random_batches(tokenizer.vocab_size):
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        with torch.no_grad():
            ref = model(torch.from_numpy(ids), torch.from_numpy(mask))
        for n, a, b in zip(names, fp32.run(names, feeds), int8.run(names, feeds)):
            worst = max(worst, float(np.abs(a - ref[n].numpy()).max()))
            a32[n].append(a)
            a8[n].append(b)
    assert worst < 1e-4
    tasks = [TaskSpec.from_dict(t) for t in meta["tasks"]]
    stats = onnx_export.agreement(
        tasks, {n: np.concatenate(v) for n, v in a32.items()}, {n: np.concatenate(v) for n, v in a8.items()}, thresholds
    )
    print(
        f"fp32 max|diff| {worst:.2e}; int8 on random token batches: decision agreement "
        f"{stats['decision_agreement']:.1%}, exact label sets {stats['exact_match']}"
    )
    assert stats["decision_agreement"] >= onnx_export.DEFAULT_MIN_AGREEMENT


def test_threshold_sources(goemotions_run, tmp_path):
    import torch

    from emotrain.checkpointing import resolve_checkpoint

    best = resolve_checkpoint(goemotions_run, "best")
    tuned = json.loads((goemotions_run / "metrics.json").read_text())["thresholds"]
    tok = goemotions_run / "model"

    # The run's best checkpoint file: the run's tuned thresholds.
    out = export_bundle(best, tmp_path / "best", quantize=False, check=False)
    assert_same_thresholds(json.loads((out / "bundle.json").read_text())["thresholds"], tuned)

    # A bare checkpoint (outside any run): its extra["thresholds"], else 0.5.
    # The best checkpoint carries the tuned thresholds itself (written at the end of training).
    ckpt = torch.load(best, weights_only=True)
    bare = tmp_path / "bare.pt"
    torch.save(ckpt, bare)
    out = export_bundle(bare, quantize=False, check=False, tokenizer=tok)
    assert out == tmp_path / "bare_bundle"  # default: next to the checkpoint
    meta = json.loads((out / "bundle.json").read_text())
    assert "extra" in meta["thresholds_source"]
    assert_same_thresholds(meta["thresholds"], tuned)

    del ckpt["extra"]["thresholds"]
    torch.save(ckpt, bare)
    meta = json.loads((export_bundle(bare, quantize=False, check=False, tokenizer=tok) / "bundle.json").read_text())
    assert meta["thresholds_source"] == "default 0.5"
    assert all(v == [0.5] * len(v) for v in meta["thresholds"].values())

    ckpt["extra"]["thresholds"] = {"emotion": [0.3] * 28}
    torch.save(ckpt, bare)
    meta = json.loads((export_bundle(bare, quantize=False, check=False, tokenizer=tok) / "bundle.json").read_text())
    assert meta["thresholds"]["emotion"] == [0.3] * 28 and meta["thresholds"]["ekman"] == [0.5] * 7
    assert "extra" in meta["thresholds_source"]

    ckpt["extra"]["thresholds"] = {"emotion": [0.3] * 5}
    torch.save(ckpt, bare)
    with pytest.raises(EmotrainError) as e:
        export_bundle(bare, quantize=False, check=False, tokenizer=tok)
    assert "emotion" in str(e.value) and "\n" not in str(e.value)


def test_fp32_check_fails_loudly_on_a_wrong_graph(sample_run, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    original = onnx_export._export_onnx

    def perturbed(model, path, *args, **kwargs):
        original(model, path, *args, **kwargs)
        graph = onnx.load(str(path))
        for init in graph.graph.initializer:
            if init.name.endswith("heads.emotion.bias"):
                init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) + 0.01, init.name))
                break
        else:
            raise AssertionError("head bias not found in the graph")
        onnx.save(graph, str(path))

    monkeypatch.setattr(onnx_export, "_export_onnx", perturbed)
    out = tmp_path / "bundle"
    with pytest.raises(ExportCheckError) as e:
        export_bundle(sample_run, out)
    msg = str(e.value)
    assert "fp32 ONNX logits differ from PyTorch" in msg and "emotion" in msg and "\n" not in msg
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing left behind


def test_int8_check_fails_loudly_below_the_stated_agreement(sample_run, tmp_path, monkeypatch):
    import onnx
    from onnx import numpy_helper

    def bad_quantize(fp32, int8, per_channel=False):
        graph = onnx.load(str(fp32))
        for init in graph.graph.initializer:
            if ".heads." in f".{init.name}":
                init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init) * 3, init.name))
        onnx.save(graph, str(int8))
        return {"method": "broken on purpose"}

    monkeypatch.setattr(onnx_export, "_quantize", bad_quantize)
    with pytest.raises(ExportCheckError) as e:
        export_bundle(sample_run, tmp_path / "bundle", min_agreement=0.9)
    msg = str(e.value)
    assert "int8 decisions agree with fp32 on only" in msg and "min_agreement=0.9" in msg and "\n" not in msg
    assert not (tmp_path / "bundle").exists()


def test_out_dir_rules_and_pytorch_files(sample_run, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(EmotrainError, match="not a bundle"):
        export_bundle(sample_run, foreign, quantize=False, check=False)
    assert (foreign / "keep.txt").read_text() == "mine"

    out = export_bundle(sample_run, tmp_path / "b", quantize=False, pytorch=True)
    assert not (out / "model.int8.onnx").exists()
    assert json.loads((out / "bundle.json").read_text())["onnx"]["files"] == {"fp32": "model.onnx"}
    for name in ("config.json", "model.safetensors", "emotrain_model.json"):
        assert (out / name).is_file()
    from emotrain.inference import load_engine

    torch_engine, onnx_engine = load_engine(out, "pytorch"), load_engine(out)
    assert (torch_engine.model_type, onnx_engine.model_type) == ("pytorch", "onnx")
    assert torch_engine.thresholds == onnx_engine.thresholds
    a, b = torch_engine.predict("what a day"), onnx_engine.predict("what a day")
    assert a["emotion"] == b["emotion"]
    assert np.allclose(
        list(a["tasks"]["emotion"]["scores"].values()), list(b["tasks"]["emotion"]["scores"].values()), atol=1e-5
    )

    # Re-export over an existing bundle replaces it.
    (out / "stale.txt").write_text("old")
    export_bundle(sample_run, out, quantize=False, check=False)
    assert not (out / "stale.txt").exists() and not (out / "model.safetensors").exists()
    with pytest.raises(EmotrainError, match="without PyTorch weights"):
        load_engine(out, "pytorch")
    assert onnx_export.default_out_dir(sample_run / "model") == sample_run / "bundle"
    assert onnx_export.default_out_dir(sample_run / "checkpoints") == sample_run / "bundle"


def test_export_cli(sample_run, tmp_path, capsys):
    from emotrain.inference.cli import export_main, parse_export_args

    out = tmp_path / "cli_bundle"
    assert (
        export_main([f"checkpoint={sample_run}", f"out={out}", "quantize=false", "opset=17", "min_agreement=0.5"]) == 0
    )
    printed = capsys.readouterr().out
    assert f"bundle: {out}" in printed and "fp32 max|diff|" in printed
    assert (out / "model.onnx").is_file() and not (out / "model.int8.onnx").exists()

    assert parse_export_args(["checkpoint=x", "quantize=no", "atol=1e-5", "out=null"]) == {
        "checkpoint": "x",
        "quantize": False,
        "atol": 1e-5,
        "out": None,
    }
    for argv, needle in (
        (["checkpoint=x", "quantise=false"], "did you mean 'quantize'"),
        (["quantize=false"], "checkpoint=PATH is required"),
        (["checkpoint=x", "opset=new"], "opset"),
    ):
        with pytest.raises(SystemExit) as e:
            export_main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.splitlines()[-1].startswith("emotrain-export: error: ") and needle in err

    with pytest.raises(SystemExit) as e:
        export_main([f"checkpoint={tmp_path / 'missing'}"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("emotrain-export: error: ") and err.count("\n") == 1 and "missing" in err


def test_python_m_emotrain_export_help():
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain.export", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert proc.returncode == 0 and "checkpoint=PATH" in proc.stdout and "quantize" in proc.stdout


def test_fused_export_gives_the_same_predictions(tmp_path_factory, tmp_path):
    """fuse=true rewrites the graph with onnxruntime's transformer optimizer (attention, embedding and skip layer
    norms, GELU fused; int8 quantised from the fused graph) and its scores match the default plain bundle's."""
    import onnx

    from emotrain.inference import load_engine

    run = trained_run("goemotions", tmp_path_factory)
    plain = exported_bundle("goemotions", tmp_path_factory)
    fused = export_bundle(run, tmp_path / "fused", fuse=True)
    meta = json.loads((fused / "bundle.json").read_text())
    fusion = meta["onnx"]["fusion"]
    assert fusion["applied"] and fusion["fused_operators"]["Attention"] == 2  # the tiny BERT's two layers
    assert fusion["nodes_after"] < fusion["nodes_before"] and fusion["max_abs_diff_vs_plain"] <= 1e-5
    assert meta["checks"]["fp32"]["passed"] and meta["checks"]["int8"]["passed"]
    ops = {n.op_type for n in onnx.load(str(fused / "model.onnx")).graph.node}
    assert "Attention" in ops and "SkipLayerNormalization" in ops
    assert "QAttention" in {n.op_type for n in onnx.load(str(fused / "model.int8.onnx")).graph.node}
    texts = ["I love it", "this is awful and I am so angry about it", "", "meh " * 50]
    a, _ = load_engine(fused, "onnx").predict_scores(texts)
    b, _ = load_engine(plain, "onnx").predict_scores(texts)
    for task in a:
        np.testing.assert_allclose(a[task], b[task], atol=1e-5)
