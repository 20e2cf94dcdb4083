"""Sharing a trained model: model/ as a Hugging Face folder, the model card, bundle.json's test metrics, the test
split's predictions and the error analysis built from them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from test_inference import exported_bundle, trained_run  # noqa: E402, F401  (shared, trained once per session)

from conftest import quick, subprocess_env, train  # noqa: E402
from emotrain.data.types import TaskSpec  # noqa: E402
from emotrain.inference.predictions import PREDICTIONS_FILE, error_analysis, read_records  # noqa: E402


def _front_matter(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    head, body = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


@pytest.mark.parametrize("kind", ["sample", "goemotions"])
def test_model_folder_loads_with_transformers(kind, tmp_path_factory):
    """AutoModel loads the trained encoder with every weight equal to the kept checkpoint's; AutoTokenizer loads."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from emotrain.checkpointing import read_checkpoint, resolve_checkpoint

    run = trained_run(kind, tmp_path_factory)
    model_dir = run / "model"
    encoder, info = AutoModel.from_pretrained(str(model_dir), output_loading_info=True)
    # The tiny backbone is built without BERT's pooler (emotrain pools itself): the only weights AutoModel adds.
    assert all(k.startswith("pooler.") for k in info["missing_keys"]), info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    state = read_checkpoint(resolve_checkpoint(run, "best"), "cpu")["model"]
    trained = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    loaded = encoder.state_dict()
    assert trained and set(trained) <= set(loaded)
    for name, value in trained.items():
        assert torch.equal(loaded[name], value), name
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    assert tokenizer("I am happy")["input_ids"][0] == tokenizer.cls_token_id


def test_model_folder_one_call_loader_and_old_layout(tmp_path_factory, tmp_path):
    """emotrain.load_model gives encoder + heads; a model/ folder of the format before (all weights in
    model.safetensors, `encoder.`/`heads.` names) still loads to the same outputs."""
    import torch
    from safetensors.torch import load_file, save_file

    import emotrain

    run = trained_run("goemotions", tmp_path_factory)
    model, tokenizer, facts = emotrain.load_model(run)  # a run directory finds its model/
    assert [t["name"] for t in facts["tasks"]] == ["emotion", "ekman", "sentiment"]
    assert facts["format_version"] == 2 and facts["files"]["heads"] == "emotrain_heads.safetensors"
    batch = tokenizer(["so happy", "this is awful news"], padding=True, return_tensors="pt")
    with torch.no_grad():
        new = model(batch["input_ids"], batch["attention_mask"])

    old = tmp_path / "old_model"
    shutil.copytree(run / "model", old)
    merged = {f"encoder.{k}": v for k, v in load_file(str(old / "model.safetensors")).items()}
    merged.update(load_file(str(old / "emotrain_heads.safetensors")))
    save_file(merged, str(old / "model.safetensors"))
    (old / "emotrain_heads.safetensors").unlink()
    meta = json.loads((old / "emotrain_model.json").read_text())
    meta["format_version"] = 1
    meta.pop("files")
    (old / "emotrain_model.json").write_text(json.dumps(meta))
    legacy, _, _ = emotrain.load_model(old)
    with torch.no_grad():
        before = legacy(batch["input_ids"], batch["attention_mask"])
    for task in new:
        assert torch.equal(new[task], before[task])


def test_model_folder_missing_heads_file_is_one_line(tmp_path_factory, tmp_path):
    from emotrain.errors import CheckpointError
    from emotrain.inference.model_dir import load_exported_model

    run = trained_run("sample", tmp_path_factory)
    broken = tmp_path / "model"
    shutil.copytree(run / "model", broken)
    (broken / "emotrain_heads.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"emotrain_heads\.safetensors: missing; re-run export_model"):
        load_exported_model(broken)


def test_model_card_in_model_folder(tmp_path_factory):
    """README.md in the Hub's format: YAML metadata whose metric values are the run's, and a body with the tasks,
    labels, results at tuned thresholds and at 0.5, data, recipe, thresholds, limitations and loading."""
    run = trained_run("goemotions", tmp_path_factory)
    metrics = json.loads((run / "metrics.json").read_text())
    card = (run / "model" / "README.md").read_text()
    meta, body = _front_matter(card)
    assert meta["language"] == ["en"] and meta["pipeline_tag"] == "text-classification"
    assert meta["datasets"] == ["google-research-datasets/go_emotions"]
    assert "multi-label-classification" in meta["tags"] and meta["license"]
    results = meta["model-index"][0]["results"]
    assert [r["task"]["name"].split(" ")[0] for r in results] == ["emotion", "ekman", "sentiment"]
    for r in results:
        task = r["task"]["name"].split(" ")[0]
        values = {m["name"]: m["value"] for m in r["metrics"]}
        assert values["macro-F1 (tuned thresholds)"] == round(metrics["test"][f"{task}/macro_f1"], 4)
        assert values["macro-F1 at 0.5"] == round(metrics["test_at_0.5"][f"{task}/macro_f1"], 4)
        assert r["dataset"]["split"] == "test"
    for text in (
        "admiration, amusement",  # labels
        "| emotion | " + f"{metrics['test']['emotion/macro_f1']:.4f}",
        f"{metrics['test_at_0.5']['emotion/macro_f1']:.4f}",
        f"train {metrics['data_sizes']['train']}, validation {metrics['data_sizes']['val']}",
        f"seed {metrics['seed']}",
        "git commit",
        "## Decision thresholds",
        "Reddit",  # the data's biases
        "English only",
        "PII scrub is on",
        "AutoModel.from_pretrained",
        "emotrain.load_model",
    ):
        assert text in body, text


def test_bundle_carries_test_metrics_and_card(tmp_path_factory, tmp_path):
    from emotrain.inference import export_bundle

    bundle = exported_bundle("goemotions", tmp_path_factory)
    run = bundle.parent
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((bundle / "bundle.json").read_text())
    assert meta["test"]["metrics"] == metrics["test"]
    assert meta["test"]["metrics_at_0.5"] == metrics["test_at_0.5"]
    assert meta["test"]["split_size"] == metrics["data_sizes"]["test"] and meta["test"]["best"] == metrics["best"]
    front, body = _front_matter((bundle / "README.md").read_text())
    assert "onnx" in front["tags"] and front["model-index"]
    assert "model.int8.onnx" in body and "onnxruntime" in body and '"token_type_ids"' in body

    # Weights that are not known to be a run's kept model carry no test metrics, and the card says so.
    best = json.loads((run / "checkpoints" / "best.json").read_text())["path"]
    lone = tmp_path / "lone.pt"
    shutil.copy2(run / "checkpoints" / best, lone)
    other = export_bundle(lone, tmp_path / "lone_bundle", quantize=False, check=False, tokenizer=run / "model")
    assert json.loads((other / "bundle.json").read_text())["test"] is None
    assert "No test results were recorded" in (other / "README.md").read_text()


def test_test_predictions_file_matches_the_metrics(tmp_path_factory):
    """predictions_test.jsonl: one record per test text, ids from the source file, gold labels, the kept model's
    decisions; scoring the file again gives metrics.json's test macro-F1."""
    from sklearn.metrics import f1_score

    run = trained_run("goemotions", tmp_path_factory)
    metrics = json.loads((run / "metrics.json").read_text())
    records = read_records(run / PREDICTIONS_FILE)
    assert len(records) == metrics["data_sizes"]["test"]
    assert len({r["id"] for r in records}) == len(records)
    source = (run.parent / "goemotions_slice" / "test.tsv").read_text().splitlines()
    assert records[0]["id"] == source[0].split("\t")[2]  # GoEmotions' own comment id
    for task in metrics["tasks"]:
        name, labels = task["name"], task["labels"]
        gold = np.array([[label in r["gold"][name] for label in labels] for r in records])
        pred = np.array([[label in r["tasks"][name]["labels"] for label in labels] for r in records])
        score = f1_score(gold, pred, average="macro", zero_division=0)
        assert score == pytest.approx(metrics["test"][f"{name}/macro_f1"], abs=1e-9), name
        thresholds = metrics["thresholds"][name]
        for r in records[:20]:
            chosen = {lab for lab, th in zip(labels, thresholds) if r["tasks"][name]["scores"][lab] >= th}
            assert set(r["tasks"][name]["labels"]) == chosen
    assert records[0]["emotion"] == records[0]["tasks"]["emotion"]["label"]


def test_predict_cli_writes_the_same_schema(tmp_path_factory):
    """emotrain-predict on the test texts: the same keys as predictions_test.jsonl minus id/gold, the same
    decisions and scores within ONNX tolerance."""
    bundle = exported_bundle("goemotions", tmp_path_factory)
    records = read_records(bundle.parent / PREDICTIONS_FILE)[:12]
    lines = "".join(json.dumps({"text": r["text"], "id": r["id"]}) + "\n" for r in records)
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain.inference.cli", "--model", str(bundle), "--quiet"],
        input=lines,
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == len(records)
    for got, want in zip(out, records):
        assert set(got) == set(want) - {"gold"}
        assert got["id"] == want["id"] and got["text"] == want["text"]
        for task, pred in want["tasks"].items():
            assert got["tasks"][task]["label"] == pred["label"]
            scores = np.array(list(got["tasks"][task]["scores"].values()))
            assert np.allclose(scores, list(pred["scores"].values()), atol=1e-4)


def test_error_analysis_counts():
    tasks = [
        TaskSpec("emotion", ("joy", "anger", "fear"), multilabel=True),
        TaskSpec("sentiment", ("pos", "neg"), multilabel=False),
    ]

    def rec(gold_e, pred_e, gold_s, pred_s):
        return {
            "gold": {"emotion": gold_e, "sentiment": [gold_s]},
            "tasks": {"emotion": {"labels": pred_e}, "sentiment": {"labels": [pred_s]}},
        }

    records = [
        rec(["joy"], ["joy"], "pos", "pos"),
        rec(["anger"], ["joy"], "neg", "pos"),
        rec(["anger", "fear"], ["joy"], "neg", "pos"),
        rec(["fear"], [], "neg", "neg"),
    ]
    out = error_analysis(records, tasks, top=3)
    emotion = out["emotion"]
    assert emotion["confusions"][0] == {"gold": "anger", "predicted": "joy", "count": 2}
    assert {"gold": "fear", "predicted": "(none)", "count": 1} in emotion["confusions"]
    worst = {w["label"]: w for w in emotion["worst_labels"]}
    assert worst["anger"]["f1"] == 0.0 and worst["anger"]["support"] == 2
    assert worst["joy"]["f1"] == pytest.approx(0.5) and worst["joy"]["predicted"] == 3
    assert [w["label"] for w in emotion["worst_labels"]][:2] == ["anger", "fear"]  # F1 0, larger support first
    assert out["sentiment"]["confusions"] == [{"gold": "neg", "predicted": "pos", "count": 2}]


def test_report_lists_where_the_model_errs(tmp_path):
    train(quick("trainer.epochs=1", checkpoints=True, report=True), tmp_path)
    run = tmp_path / "run"
    report = json.loads((run / "report" / "report.json").read_text())
    records = read_records(run / PREDICTIONS_FILE)
    assert records[0]["id"] == "test.csv:2"  # the sample's first data line (after the header)
    assert report["errors"]["emotion"]["examples"] == len(records)
    first = report["errors"]["emotion"]["confusions"][0]
    count = sum(
        1
        for r in records
        if first["gold"] in r["gold"]["emotion"] and r["tasks"]["emotion"]["label"] == first["predicted"]
    )
    assert count == first["count"]
    summary = (run / "report" / "summary.txt").read_text()
    assert "Where it errs" in summary and f"{first['gold']} -> {first['predicted']} ({first['count']})" in summary
    html = (run / "report" / "report.html").read_text()
    assert "Where it errs" in html and PREDICTIONS_FILE in html
    assert (run / "model" / "README.md").is_file()
