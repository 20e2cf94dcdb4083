"""The model card (README.md) of a run's model/ directory and of every bundle, in the Hugging Face Hub's format.

YAML metadata (language, license, tags, datasets, base model, model-index with the test metrics),
then a body a reader can trust: what the model predicts (tasks and labels), how well (test metrics
per task at the kept model's decisions and at 0.5), on what data (sizes and source), how it was
trained (backbone, epochs, lr, loss, precision, seed, git commit), its decision thresholds, its
intended use and limitations, and how to load it with emotrain, transformers and onnxruntime.
Everything comes from the run's RunResult (metrics.json); a model without one says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from emotrain.results import RunResult

# What the Hub knows about the data sets and backbones emotrain ships with.
DATASETS = {
    "goemotions": ("google-research-datasets/go_emotions", "GoEmotions (Demszky et al., ACL 2020), the paper's splits")
}
BACKBONE_LICENSES = {"sentence-transformers/all-MiniLM-L6-v2": "apache-2.0"}


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def _data_source(config: Mapping) -> tuple[str | None, str]:
    data = config.get("data") or {}
    kind = data.get("kind")
    if kind in DATASETS:
        return DATASETS[kind]
    if kind == "sample":
        return (
            None,
            "emotrain's built-in sample: 560 short English sentences written for the project (7 emotions, 4 sentiments)",
        )
    files = [data.get(k) for k in ("train_file", "val_file", "test_file") if data.get(k)]
    return None, f"the user's files ({', '.join(map(str, files)) or 'data=table'})"


def _metadata(result: RunResult | None, meta: Mapping, bundle: bool) -> dict:
    config = result.config if result else {}
    dataset_id, _ = _data_source(config)
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
                        "name": _data_source(config)[1].split(" (")[0],
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
        f"Test split ({sizes.get('test')} texts), scored with the model of epoch {best.get('epoch')} of {result.epochs_run}, the one "
        f"that had the best validation {best.get('metric')} ({best.get('mode')}).",
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
            f"Multi-label tasks ({', '.join(decisions['applies_to'])}) decide with {decisions['description']}; the last "
            "column scores the same model with every label at 0.5. Accuracy of a multi-label task is subset accuracy "
            "(every label of the text right).",
        ]
    return lines


def _data_section(result: RunResult | None) -> list[str]:
    if not result:
        return []
    _, source = _data_source(result.config)
    sizes = result.data_sizes
    pre = (result.config.get("data") or {}).get("preprocess") or {}
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
    return [
        "## Training",
        "",
        f"- Backbone: `{(c.get('backbone') or {}).get('name')}` ({meta.get('pooling')} pooling, max length {meta.get('max_length')} tokens), "
        f"one linear head per task.",
        f"- {result.epochs_run} epochs ({result.global_steps} optimiser steps), batch {result.effective_batch_size}, AdamW lr "
        f"{optim.get('lr')} (heads {optim.get('head_lr') or optim.get('lr')}), weight decay {optim.get('weight_decay')}, "
        f"dropout {trainer.get('dropout')}.",
        f"- Loss: {loss.get('kind')} (label reduction {loss.get('label_reduction')}, task weighting {loss.get('task_weighting')}).",
        f"- Precision {precision.get('effective')} (requested {precision.get('requested')}) on {result.device}; seed {result.seed}, "
        f"deterministic {result.deterministic}.",
        f"- Code: emotrain {result.versions.get('emotrain')}, git commit {git.get('commit') or 'unknown'}"
        + (" (with uncommitted changes)" if git.get("dirty") else "")
        + f"; torch {result.versions.get('torch')}, "
        f"transformers {result.versions.get('transformers')}.",
        "- Reproduce: `python -m emotrain "
        + " ".join(result.overrides)
        + "` (the run's overrides; .hydra/config.yaml has the rest).",
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


def _use_section() -> list[str]:
    return [
        "## Intended use and limitations",
        "",
        "- For research and for analysing the emotions expressed in short English texts (comments, reviews, messages) in "
        "aggregate. Not for decisions about individual people (hiring, credit, health, policing), and not as a measure of "
        "what a person feels: it labels what a text expresses, as annotators read it.",
        "- Emotion labels are subjective: annotators disagree often, so the labels are noisy and the scores above are "
        "bounded by that agreement. Rare emotions have few examples and the lowest F1.",
        "- The data carries the biases of its source (GoEmotions: Reddit comments, mostly young male US users; its "
        "annotators were from India) and of its annotators; expect worse results on other registers, dialects and "
        "communities, and on sarcasm and negation.",
        "- English only unless it was trained on another language; other languages get meaningless labels.",
        "- Personal data: e-mails, URLs, phone and card numbers and @handles are replaced by placeholders before training "
        "and before every prediction (the PII scrub), unless the run turned it off.",
    ]


def _load_section(bundle: bool) -> list[str]:
    lines = [
        "## How to load",
        "",
        "With emotrain (`pip install emotrain`; ONNX bundles need only `emotrain[inference]`):",
        "",
        "```python",
        "import emotrain",
        'engine = emotrain.load("PATH")  # this directory',
        'engine.predict("I love this!")',
        "```",
        "",
    ]
    if bundle:
        lines += [
            "With onnxruntime alone: `model.onnx` (fp32) or `model.int8.onnx` take `input_ids` and `attention_mask` "
            "(int64, from `tokenizer.json` with `tokenizers`, truncated to `max_length` in bundle.json) and return one "
            "logits output per task; apply softmax (multi-class) or a sigmoid per label and the thresholds (multi-label), "
            "as bundle.json describes.",
            "",
            "```python",
            "import numpy as np, onnxruntime as ort",
            "from tokenizers import Tokenizer",
            'tok = Tokenizer.from_file("tokenizer.json")',
            'session = ort.InferenceSession("model.onnx")',
            'enc = tok.encode("I love this!")',
            'feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.array([enc.attention_mask])}',
            "logits = session.run(None, feeds)  # one array per task, in bundle.json's task order",
            "```",
        ]
    else:
        lines += [
            "With transformers (the encoder; the heads are in emotrain_heads.safetensors):",
            "",
            "```python",
            "from transformers import AutoModel, AutoTokenizer",
            'encoder = AutoModel.from_pretrained("PATH")',
            'tokenizer = AutoTokenizer.from_pretrained("PATH")',
            "```",
        ]
    return lines


def model_card(result: RunResult | None, meta: Mapping, *, bundle: bool = False) -> str:
    """README.md for a model directory (`bundle=False`) or an ONNX bundle; `meta`: its emotrain_model.json / bundle.json facts."""
    front = yaml.safe_dump(_metadata(result, meta, bundle), sort_keys=False, allow_unicode=True).strip()
    title = f"# Emotion classifier: {', '.join(t['name'] for t in meta.get('tasks') or [])} ({meta.get('backbone')})"
    sections = [
        _tasks_section(meta),
        _results_section(result),
        _data_section(result),
        _recipe_section(result, meta),
        _thresholds_section(meta),
        _use_section(),
        _load_section(bundle),
    ]
    body = [title, "", "Fine-tuned with emotrain: one shared encoder, one head per task."]
    for section in sections:
        if section:
            body += [""] + section
    return f"---\n{front}\n---\n\n" + "\n".join(body) + "\n"
