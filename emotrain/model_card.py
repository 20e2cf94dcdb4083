"""The model card (README.md) of a run's model/ directory and of every bundle, in the Hugging Face Hub's format.

YAML metadata (language, license, tags, datasets, base model, model-index with the test metrics),
then a body a reader can trust: what the model predicts (tasks and labels), how well (test metrics
per task at the kept model's decisions and at 0.5), on what data (sizes and source), how it was
trained (backbone, epochs, lr, loss, precision, seed, git commit), its decision thresholds, its
intended use and limitations, and how to load it with emotrain, transformers and onnxruntime.
Everything comes from the run's RunResult (metrics.json); a model without one says so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from emotrain.io import atomic_write
from emotrain.results import RunResult

CARD_FILE = "README.md"

# What the Hub knows about the data sets and backbones emotrain ships with.
DATASETS = {
    "goemotions": (
        "google-research-datasets/go_emotions",
        "GoEmotions",
        "GoEmotions (Demszky et al., ACL 2020), the paper's splits",
    )
}
BACKBONE_LICENSES = {"sentence-transformers/all-MiniLM-L6-v2": "apache-2.0"}


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _data_source(config: Mapping) -> tuple[str | None, str, str]:
    """(hub dataset id or None, short name, description) of the run's data."""
    data = config.get("data") or {}
    kind = data.get("kind")
    if kind in DATASETS:
        return DATASETS[kind]
    if kind == "sample":
        return (
            None,
            "emotrain sample",
            "emotrain's built-in sample: 560 short English sentences written for the project "
            "(7 emotions, 4 sentiments)",
        )
    files = [str(data.get(k)) for k in ("train_file", "val_file", "test_file") if data.get(k)]
    return None, "custom", f"the trainer's own files ({', '.join(files) or 'data=' + str(kind)})"


def _metadata(result: RunResult | None, meta: Mapping, bundle: bool) -> dict:
    config = result.config if result else {}
    dataset_id, dataset_name, _ = _data_source(config)
    backbone = meta.get("backbone") or (config.get("backbone") or {}).get("name")
    multilabel = any(t.get("multilabel") for t in meta.get("tasks") or [])
    out: dict[str, Any] = {
        "language": ["en"],
        "license": BACKBONE_LICENSES.get(str(backbone), "other"),
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["emotrain", "emotion-classification", "text-classification", "multi-task"]
        + (["multi-label-classification"] if multilabel else [])
        + (["onnx"] if bundle else []),
    }
    if backbone and "/" in str(backbone):
        out["base_model"] = str(backbone)
    if dataset_id:
        out["datasets"] = [dataset_id]
    out["metrics"] = ["f1", "accuracy"]
    if result and result.test:
        results = []
        for t in result.tasks:
            name, acc = t["name"], "subset_accuracy" if t.get("multilabel") else "accuracy"
            metrics = [
                {
                    "type": "f1",
                    "name": "macro-F1" + (" (tuned thresholds)" if t.get("multilabel") else ""),
                    "value": round(float(result.test[f"{name}/macro_f1"]), 4),
                },
                {"type": "f1", "name": "micro-F1", "value": round(float(result.test[f"{name}/micro_f1"]), 4)},
                {
                    "type": "accuracy",
                    "name": acc.replace("_", " "),
                    "value": round(float(result.test[f"{name}/{acc}"]), 4),
                },
            ]
            if t.get("multilabel") and result.test_at_05:
                metrics.append(
                    {
                        "type": "f1",
                        "name": "macro-F1 at 0.5",
                        "value": round(float(result.test_at_05[f"{name}/macro_f1"]), 4),
                    }
                )
            results.append(
                {
                    "task": {
                        "type": "text-classification",
                        "name": f"{name} ({'multi-label' if t.get('multilabel') else 'multi-class'})",
                    },
                    "dataset": {
                        "name": dataset_name,
                        "type": dataset_id or "custom",
                        "split": "test",
                    },
                    "metrics": metrics,
                }
            )
        out["model-index"] = [{"name": f"emotrain-{backbone or 'model'}".replace("/", "-"), "results": results}]
    return out


def _tasks_section(meta: Mapping) -> list[str]:
    lines = ["## What it predicts", ""]
    for t in meta.get("tasks") or []:
        kind = (
            "multi-label: any number of labels per text" if t.get("multilabel") else "multi-class: one label per text"
        )
        lines.append(f"- **{t['name']}** ({kind}): {', '.join(t['labels'])}")
    primary = meta.get("primary_task")
    if primary:
        lines += ["", f"The primary task is `{primary}`: `engine.predict(text)['{primary}']` is its top label."]
    return lines


def _results_section(result: RunResult | None) -> list[str]:
    if not result or not result.test:
        return [
            "## How well",
            "",
            "No test results were recorded with this model (a bare checkpoint, or no test split).",
        ]
    sizes = result.data_sizes
    best = result.best
    lines = [
        "## How well",
        "",
        f"Test split ({sizes.get('test')} texts), scored with the model of epoch {best.get('epoch')} of "
        f"{result.epochs_run}, the one with the best validation {best.get('metric')} ({best.get('mode')}).",
        "",
        "| task | macro-F1 | micro-F1 | accuracy | macro-F1 at 0.5 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in result.tasks:
        name, acc = t["name"], "subset_accuracy" if t.get("multilabel") else "accuracy"
        at05 = _num(result.test_at_05.get(f"{name}/macro_f1")) if t.get("multilabel") else "-"
        lines.append(
            f"| {name} | {_num(result.test.get(f'{name}/macro_f1'))} | {_num(result.test.get(f'{name}/micro_f1'))} | "
            f"{_num(result.test.get(f'{name}/{acc}'))} | {at05} |"
        )
    decisions = result.decisions or {}
    if decisions.get("applies_to"):
        lines += [
            "",
            f"Multi-label tasks ({', '.join(decisions['applies_to'])}) decide with {decisions['description']}; "
            "the last column scores the same model with every label at 0.5. Accuracy of a multi-label task is "
            "subset accuracy (every label of the text right).",
        ]
    return lines


def _data_section(result: RunResult | None, meta: Mapping) -> list[str]:
    if not result:
        return []
    _, _, source = _data_source(result.config)
    sizes = result.data_sizes
    pre = meta.get("preprocess") or (result.config.get("data") or {}).get("preprocess") or {}
    steps = [
        name
        for name, key in (
            ("NFKC normalisation", "normalize_unicode"),
            ("whitespace clean-up", "clean_whitespace"),
            ("lower-casing", "lowercase"),
            ("PII scrub", "scrub_pii"),
        )
        if pre.get(key)
    ]
    return [
        "## Data",
        "",
        f"- Source: {source}.",
        f"- Sizes: train {sizes.get('train')}, validation {sizes.get('val')}, test {sizes.get('test')} texts.",
        f"- Preprocessing (applied again at inference): {', '.join(steps) or 'none'}.",
    ]


def _recipe_section(result: RunResult | None, meta: Mapping) -> list[str]:
    if not result:
        return ["## Training", "", f"Backbone: {meta.get('backbone')}; no run record (metrics.json) was found."]
    c = result.config
    git = result.git or {}
    loss = c.get("loss") or {}
    optim = c.get("optim") or {}
    trainer = c.get("trainer") or {}
    precision = result.precision or {}
    backbone = (c.get("backbone") or {}).get("name") or meta.get("backbone")
    commit = (git.get("commit") or "unknown") + (" (with uncommitted changes)" if git.get("dirty") else "")
    versions = result.versions or {}
    return [
        "## Training",
        "",
        f"- Backbone: `{backbone}` ({meta.get('pooling')} pooling, max length {meta.get('max_length')} tokens), "
        "one linear head per task.",
        f"- {result.epochs_run} epochs ({result.global_steps} optimiser steps), batch {result.effective_batch_size}, "
        f"{optim.get('name', 'adamw')} lr {optim.get('lr')}, weight decay {optim.get('weight_decay')}, "
        f"dropout {trainer.get('dropout')}.",
        f"- Loss: {loss.get('kind')} (label reduction {loss.get('label_reduction')}, task weighting "
        f"{loss.get('task_weighting')}).",
        f"- Precision {precision.get('effective')} (requested {precision.get('requested')}) on {result.device}; "
        f"seed {result.seed}, deterministic {result.deterministic}.",
        f"- Code: emotrain {versions.get('emotrain')}, git commit {commit}; torch {versions.get('torch')}, "
        f"transformers {versions.get('transformers')}.",
        f"- Reproduce: `python -m emotrain {' '.join(result.overrides)}` (the run's overrides; its .hydra/config.yaml "
        "has the rest).",
    ]


def _thresholds_section(meta: Mapping) -> list[str]:
    thresholds = meta.get("thresholds") or {}
    if not thresholds:
        return []
    labels = {t["name"]: t["labels"] for t in meta.get("tasks") or []}
    lines = [
        "## Decision thresholds",
        "",
        "A label of a multi-label task is on when its probability reaches its threshold:",
        "",
    ]
    for task, values in thresholds.items():
        pairs = ", ".join(f"{label} {value:.2f}" for label, value in zip(labels.get(task, []), values))
        lines.append(f"- {task}: {pairs}")
    return lines


def _use_section(result: RunResult | None, meta: Mapping) -> list[str]:
    config = result.config if result else {}
    kind = (config.get("data") or {}).get("kind")
    pre = meta.get("preprocess") or (config.get("data") or {}).get("preprocess") or {}
    if kind == "goemotions":
        source_bias = (
            "- GoEmotions comes from Reddit comments (mostly young, male, US users) rated by annotators in India: "
            "expect worse results on other registers, dialects and communities, and on sarcasm and negation."
        )
    elif kind == "sample":
        source_bias = (
            "- Trained on emotrain's built-in sample (a few hundred short sentences written for the project): a "
            "demonstration, not a model for real texts."
        )
    else:
        source_bias = (
            "- The model carries the biases of its training data and of whoever labelled it; check it on texts like "
            "yours before relying on it."
        )
    if pre.get("scrub_pii"):
        pii = (
            "- Personal data: e-mail addresses, URLs, phone and card numbers and @handles are replaced by placeholders "
            "before training and before every prediction (the PII scrub is on)."
        )
    else:
        pii = "- Personal data: the PII scrub was off for this model; texts reach it (and its logs) as they are."
    return [
        "## Intended use and limitations",
        "",
        "- For research and for analysing the emotions that short texts express, in aggregate. Not for decisions "
        "about individual people (hiring, credit, health, policing), and not a measure of what a person feels: it "
        "labels what a text expresses, as annotators read it.",
        "- Emotion labels are subjective: annotators often disagree, so the labels are noisy and the scores above "
        "are bounded by that agreement. Rare labels have few examples and the lowest F1.",
        source_bias,
        "- English only unless it was trained on another language: other languages get meaningless labels.",
        pii,
    ]


def _load_section(meta: Mapping, bundle: bool) -> list[str]:
    lines = [
        "## How to load",
        "",
        "With emotrain installed (an ONNX bundle needs only the inference extra: onnxruntime, tokenizers, numpy):",
        "",
        "```python",
        "import emotrain",
        'engine = emotrain.load("PATH")  # PATH: this directory',
        'engine.predict("I love this!")  # {"' + str(meta.get("primary_task") or "emotion") + '": ..., "tasks": ...}',
        "```",
        "",
        'or from a shell: `emotrain-predict --model PATH "I love this!"`.',
        "",
    ]
    if bundle:
        inputs = (meta.get("onnx") or {}).get("inputs") or ["input_ids", "attention_mask"]
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        feeds = ", ".join(f'"{name}": np.array([enc.{fields.get(name, name)}])' for name in inputs)
        lines += [
            f"With onnxruntime alone: `model.onnx` (fp32) or `model.int8.onnx` take {', '.join(inputs)} (int64, from "
            "`tokenizer.json`, truncated to `max_length` in bundle.json, texts preprocessed as bundle.json's "
            "`preprocess` says) and return one logits output per task; apply softmax (multi-class) or a sigmoid per "
            "label and the thresholds (multi-label).",
            "",
            "```python",
            "import numpy as np, onnxruntime as ort",
            "from tokenizers import Tokenizer",
            'tok = Tokenizer.from_file("PATH/tokenizer.json")',
            'session = ort.InferenceSession("PATH/model.onnx")',
            'enc = tok.encode("I love this!")',
            f"logits = session.run(None, {{{feeds}}})  # one array per task, in bundle.json's task order",
            "```",
        ]
    else:
        lines += [
            "With transformers: this folder is a Hugging Face model folder of the fine-tuned encoder; the task heads "
            "are in `emotrain_heads.safetensors` and the labels, thresholds and pooling in `emotrain_model.json`.",
            "",
            "```python",
            "from transformers import AutoModel, AutoTokenizer",
            'encoder = AutoModel.from_pretrained("PATH")      # the trained encoder',
            'tokenizer = AutoTokenizer.from_pretrained("PATH")',
            "",
            "import emotrain",
            'model, tokenizer, facts = emotrain.load_model("PATH")  # encoder + heads as one torch module',
            "```",
        ]
    return lines


def model_card(result: RunResult | None, meta: Mapping, *, bundle: bool = False) -> str:
    """README.md of a model/ folder (`bundle=False`) or an ONNX bundle. `meta`: its emotrain_model.json or
    bundle.json; `result`: the run that kept this model (None: the card says no results were recorded)."""
    front = yaml.safe_dump(_metadata(result, meta, bundle), sort_keys=False, allow_unicode=True).strip()
    tasks = ", ".join(t["name"] for t in meta.get("tasks") or [])
    title = f"# Emotion classifier ({tasks}) on {meta.get('backbone')}"
    sections = [
        _tasks_section(meta),
        _results_section(result),
        _data_section(result, meta),
        _recipe_section(result, meta),
        _thresholds_section(meta),
        _use_section(result, meta),
        _load_section(meta, bundle),
    ]
    what = "an ONNX bundle (fp32 and int8 graphs)" if bundle else "a PyTorch model folder"
    body = [title, "", f"Fine-tuned with emotrain: one shared encoder, one linear head per task; this is {what}."]
    for section in sections:
        if section:
            body += [""] + section
    return f"---\n{front}\n---\n\n" + "\n".join(body) + "\n"


def write_model_card(
    directory: str | Path, result: RunResult | None, *, meta: Mapping | None = None, bundle: bool = False
) -> Path:
    """Write `directory`/README.md; `meta` defaults to the folder's emotrain_model.json."""
    directory = Path(directory)
    if meta is None:
        meta = json.loads((directory / "emotrain_model.json").read_text(encoding="utf-8"))
    text = model_card(result, meta, bundle=bundle)
    return atomic_write(directory / CARD_FILE, lambda fh: fh.write(text))
