"""Export a trained model to a deployment bundle: ONNX (fp32 + int8), tokenizer, bundle.json.

    python -m emotrain.export checkpoint=RUN_DIR [out=DIR] [quantize=true] [opset=17] ...

The export checks itself before anything is written under the final name: on a set of sample
texts (built-in edge cases plus the packaged sample data, or ``samples=FILE``)

- the bundle's tokenizer must give the training tokenizer's token ids;
- the fp32 ONNX logits must match PyTorch within ``atol`` (max abs difference, default 1e-4);
- the int8 model's decisions must agree with the fp32 model's on at least ``min_agreement`` (default
  0.9) of the decisions: the class of each multi-class task, and for multi-label tasks every label
  either model switches on at the bundle's thresholds (see :data:`AGREEMENT_DEFINITION`; the exact
  label-set match and top-label agreement are reported too).

A failed check raises :class:`ExportCheckError` and leaves no bundle behind. The figures go into
``bundle.json["checks"]``.

The graph: inputs ``input_ids``, ``attention_mask`` (and ``token_type_ids`` for encoders that take
them, e.g. BERT: zeros), int64 ``[batch, sequence]`` with both axes dynamic; one float output per
task, named after the task: logits ``[batch, num_labels]``. Exported with the TorchScript-based
exporter (``dynamo=False``, no onnxscript needed), opset 17 by default.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import inspect
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from emotrain.data.types import TaskSpec
from emotrain.errors import CheckpointError, EmotrainError
from emotrain.inference.bundle import (
    BUNDLE_FORMAT,
    BUNDLE_FORMAT_VERSION,
    BUNDLE_META,
    FP32_FILE,
    INT8_FILE,
    TOKENIZER_FILE,
    ExportCheckError,
)
from emotrain.inference.engine import OnnxBackend, TorchBackend, activate
from emotrain.io import publish_modes, write_json
from emotrain.model_card import write_model_card
from emotrain.models.backbones import max_positions
from emotrain.preprocessing import Preprocessor
from emotrain.results import METRICS_FILE
from emotrain.utils import one_line

log = logging.getLogger("emotrain.inference")

DEFAULT_OPSET = 17
DEFAULT_ATOL = 1e-4
DEFAULT_MIN_AGREEMENT = 0.9
PYTORCH_FILES = ("config.json", "model.safetensors", "emotrain_heads.safetensors", "emotrain_model.json")
CHECK_BATCH = 8

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_MIN_AGREEMENT",
    "DEFAULT_OPSET",
    "SAMPLE_TEXTS",
    "default_out_dir",
    "export_bundle",
    "sample_texts",
]

# Edge cases the export must survive: empty, emoji, other scripts, PII, long, markup.
SAMPLE_TEXTS = [
    "I am so happy for you, congratulations!!",
    "This is the worst day of my life.",
    "Wow, I did not see that coming at all.",
    "Ugh, that smell is disgusting.",
    "I'm scared of what happens next...",
    "Thanks a lot, that really helped me out.",
    "ok",
    "",
    "   ",
    "😂😂😂 best thing I've seen all week",
    "I love this ❤️🔥 so much",
    "Je suis tellement contente aujourd'hui !",
    "Das ist wirklich ärgerlich.",
    "これは本当に悲しいです。",
    "我今天很高兴",
    "Это просто ужасно",
    "مرحبا، كيف حالك؟",
    "Email me at jane.doe@example.com or call 555-123-4567.",
    "[NAME] is the GOAT, no doubt about it",
    "lol what?? no way!!!",
    "I guess it's fine. Whatever.",
    "Not sure how I feel about this, honestly.",
    "Check https://example.com/page?id=42 for details",
    "I can't believe they did that to her, it's heartbreaking.",
    "You're an idiot if you think that's going to work.",
    "So proud of my little sister graduating today!",
    "Hmm, interesting. Tell me more.",
    "This is hilarious 🤣 " * 5,
    "The quick brown fox jumps over the lazy dog. " * 30,
    "I'm really sorry about your loss. Sending love.",
]


def sample_texts(extra: Iterable[str] | None = None, limit: int = 160) -> list[str]:
    """The built-in edge cases plus up to `limit` texts of the packaged sample data set (or `extra`)."""
    texts = list(SAMPLE_TEXTS)
    if extra is not None:
        return texts + [t for t in extra if isinstance(t, str)]
    sample_dir = Path(__file__).resolve().parents[1] / "data" / "resources" / "sample"
    more: list[str] = []
    for name in ("test.csv", "val.csv"):
        try:
            with open(sample_dir / name, encoding="utf-8", newline="") as fh:
                more.extend(row["text"] for row in csv.DictReader(fh) if row.get("text"))
        except (OSError, KeyError, csv.Error):
            continue
    return texts + more[:limit]


def _read_samples(path) -> list[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EmotrainError(
            f"samples={path}: cannot read it ({type(e).__name__}); pass a UTF-8 text file, one text per line"
        ) from None
    texts = [line for line in lines if line.strip()]
    if not texts:
        raise EmotrainError(f"samples={path}: no texts in it; pass a UTF-8 text file, one text per line")
    return texts


# --------------------------------------------------------------------------- output directory


def default_out_dir(source) -> Path:
    """Where a bundle goes by default: ``<run dir>/bundle``, or ``<checkpoint stem>_bundle`` next to a
    checkpoint file."""
    source = Path(source)
    if source.is_file():
        return source.parent / f"{source.stem}_bundle"
    if source.name == "checkpoints" or (source / "emotrain_model.json").is_file():
        parent = source.parent
        if source.name == "checkpoints" or (parent / "checkpoints").is_dir() or (parent / "metrics.json").is_file():
            return parent / "bundle"
        return source.parent / f"{source.name}_bundle"
    return source / "bundle"


def _check_out_dir(out: Path) -> None:
    if out.exists():
        if not out.is_dir():
            raise EmotrainError(f"out={out}: exists and is not a directory; choose another output directory")
        if any(out.iterdir()) and not (out / BUNDLE_META).is_file():
            raise EmotrainError(
                f"out={out}: exists, is not empty and is not a bundle; choose another directory (an existing bundle "
                "is replaced)"
            )


def _install(staging: Path, out: Path) -> None:
    """Move the finished staging directory to `out`, replacing an old bundle there."""
    _check_out_dir(out)
    if not out.exists():
        os.replace(staging, out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- ONNX


def _uses_token_type_ids(model) -> bool:
    encoder = model.encoder
    try:
        params = inspect.signature(encoder.forward).parameters
    except (TypeError, ValueError):
        return False
    return "token_type_ids" in params and int(getattr(encoder.config, "type_vocab_size", 0) or 0) > 0


def _export_onnx(
    model,
    path: Path,
    tasks: list[TaskSpec],
    opset: int,
    token_type_ids: bool,
    example_ids: np.ndarray,
    example_mask: np.ndarray,
) -> None:
    """Trace `model` to `path`: (input_ids, attention_mask[, token_type_ids]) -> one logits output per task."""
    import torch

    names = [t.name for t in tasks]

    class OnnxWrapper(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            out = self.inner(input_ids, attention_mask, token_type_ids)
            return tuple(out[n] for n in names)

    # Eval mode on the wrapper too: torch 2.13's exporter traces the module in the mode it is in.
    wrapper = OnnxWrapper(model).eval()
    ids = torch.from_numpy(example_ids)
    mask = torch.from_numpy(example_mask)
    args = (ids, mask)
    inputs = ["input_ids", "attention_mask"]
    if token_type_ids:
        args = (ids, mask, torch.zeros_like(ids))
        inputs.append("token_type_ids")
    axes = {n: {0: "batch", 1: "sequence"} for n in inputs}
    axes.update({n: {0: "batch"} for n in names})
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                dynamo=False,
                opset_version=int(opset),
                input_names=inputs,
                output_names=names,
                dynamic_axes=axes,
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL,
            )
    except Exception as e:
        raise EmotrainError(f"ONNX export failed (opset={opset}): {type(e).__name__}: {one_line(e, 200)}") from None


@contextmanager
def _quiet_root_logger():
    """onnxruntime.quantization logs advice through the root logger; keep the CLI output clean."""
    root = logging.getLogger()
    level = root.level
    # logging.warning() on a root logger without handlers would install one (basicConfig): add a stand-in.
    stand_in = logging.NullHandler() if not root.handlers else None
    if stand_in is not None:
        root.addHandler(stand_in)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
        if stand_in is not None:
            root.removeHandler(stand_in)


def _quantize(fp32: Path, int8: Path, per_channel: bool = True) -> dict:
    """onnxruntime dynamic quantization: int8 weights, activations quantized on the fly (of the fused graph when
    there is one: its Attention nodes become QAttention)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Fused contrib operators (Attention, SkipLayerNormalization) defeat the quantizer's shape inference: their
    # outputs are float tensors, say so.
    options = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    with _quiet_root_logger(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=bool(per_channel), extra_options=options
        )
    return {
        "method": "onnxruntime.quantization.quantize_dynamic",
        "weight_type": "QInt8",
        "per_channel": bool(per_channel),
    }


def _encoder_shape(model) -> tuple[int, int]:
    """(attention heads, hidden size) of the encoder (DistilBERT names them n_heads / dim)."""
    config = model.encoder.config
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "dim", None)
    return int(heads), int(hidden)


def _fuse(path: Path, model, feeds: dict[str, np.ndarray], atol: float) -> dict:
    """Rewrite the fp32 graph at `path` with onnxruntime's transformer optimizer (fused attention, embedding and
    skip layer norms, bias-GELU) when its outputs stay within `atol` of the plain graph's on `feeds`; the facts.
    Families the optimizer does not recognise keep the plain graph (the facts say so)."""
    import onnx
    from onnxruntime.transformers import optimizer

    heads, hidden = _encoder_shape(model)
    before = len(onnx.load(str(path)).graph.node)
    with _quiet_root_logger(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimizer.optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden)
    stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    facts = {"optimizer": "onnxruntime.transformers.optimizer", "model_type": "bert", "nodes_before": before}
    if not stats:
        return {**facts, "applied": False, "reason": "nothing to fuse in this graph"}
    candidate = path.with_suffix(".fused.onnx")
    fused.save_model_to_file(str(candidate))
    try:
        plain, rewritten = _run_graph(path, feeds), _run_graph(candidate, feeds)
        diff = max(float(np.abs(x - y).max()) for x, y in zip(plain, rewritten))
    except Exception as e:  # onnxruntime refusing the rewritten graph: keep the plain one
        candidate.unlink(missing_ok=True)
        return {**facts, "applied": False, "reason": f"{type(e).__name__}: {one_line(e, 160)}"}
    if not diff <= atol:
        candidate.unlink(missing_ok=True)
        return {**facts, "applied": False, "reason": f"outputs moved by {diff:.2e} (> {atol:g})"}
    os.replace(candidate, path)
    return {
        **facts,
        "applied": True,
        "nodes_after": len(fused.model.graph.node),
        "fused_operators": stats,
        "max_abs_diff_vs_plain": diff,
    }


def _run_graph(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@contextmanager
def _eager_attention(model):
    """Trace with eager attention: onnxruntime's optimizer recognises its MatMul-Softmax-MatMul pattern (torch's
    sdpa op exports to a graph it does not fuse). Same maths; the model's own setting is restored."""
    encoder = model.encoder
    previous = getattr(encoder.config, "_attn_implementation", None)
    try:
        encoder.set_attn_implementation("eager")
    except (AttributeError, ValueError):  # an encoder without switchable attention: trace it as it is
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            encoder.set_attn_implementation(previous)


# --------------------------------------------------------------------------- checks


def _batches(encodings, pad_id: int, batch_size: int):
    """Unsorted batches (so padding inside a batch is exercised), padded to the longest."""
    for start in range(0, len(encodings), batch_size):
        part = encodings[start : start + batch_size]
        width = max(len(e) for e in part)
        ids = np.full((len(part), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(part), width), dtype=np.int64)
        for row, seq in enumerate(part):
            ids[row, : len(seq)] = seq
            mask[row, : len(seq)] = 1
        yield ids, mask


def _logits(backend, batches, tasks) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {t.name: [] for t in tasks}
    for ids, mask in batches:
        out = backend.run(ids, mask)
        for t in tasks:
            parts[t.name].append(np.asarray(out[t.name], dtype=np.float32))
    return {k: np.concatenate(v) for k, v in parts.items()}


def _decisions(tasks, logits, thresholds) -> dict[str, np.ndarray]:
    out = {}
    for t in tasks:
        p = activate(logits[t.name], t.multilabel)
        out[t.name] = (p >= np.asarray(thresholds[t.name], dtype=np.float32)) if t.multilabel else p.argmax(-1)
    return out


def _self_check(
    src, staging: Path, texts: list[str], *, quantized: bool, atol: float, min_agreement: float, pad_id: int
) -> dict:
    from tokenizers import Tokenizer

    tasks = src.tasks
    pre = Preprocessor.from_dict(src.meta.get("preprocess") or {})
    prepared = [pre(t) for t in texts]
    tok = Tokenizer.from_file(str(staging / TOKENIZER_FILE))
    tok.no_padding()
    tok.enable_truncation(max_length=src.max_length)
    encodings = [e.ids for e in tok.encode_batch(prepared)]
    training = src.tokenizer(prepared, truncation=True, max_length=src.max_length, padding=False)["input_ids"]
    mismatch = [i for i, (a, b) in enumerate(zip(encodings, training)) if list(a) != list(b)]
    if mismatch:
        i = mismatch[0]
        raise ExportCheckError(
            f"the bundle's {TOKENIZER_FILE} tokenizes {len(mismatch)} of {len(texts)} sample texts differently from "
            "the training tokenizer "
            f"(e.g. sample {i}: {one_line(texts[i], 40)!r}); the bundle would not see what the model was trained on"
        )
    batches = list(_batches(encodings, pad_id, CHECK_BATCH)) + list(_batches(encodings[:3], pad_id, 1))
    reference = _logits(TorchBackend(src.model), batches, tasks)
    fp32 = _logits(OnnxBackend(staging / FP32_FILE, tasks), batches, tasks)
    diffs = {t.name: float(np.abs(fp32[t.name] - reference[t.name]).max()) for t in tasks}
    worst = max(diffs, key=diffs.get)
    checks = {
        "samples": len(texts),
        "fp32": {"max_abs_diff_logits": diffs[worst], "per_task": diffs, "atol": atol, "passed": diffs[worst] <= atol},
    }
    if not diffs[worst] <= atol:  # also catches NaN
        raise ExportCheckError(
            f"fp32 ONNX logits differ from PyTorch by {diffs[worst]:.3g} (task {worst!r}) on {len(texts)} sample "
            "texts, "
            f"more than atol={atol:g}; the exported graph does not reproduce the model - no bundle written"
        )
    if quantized:
        int8 = _logits(OnnxBackend(staging / INT8_FILE, tasks), batches, tasks)
        checks["int8"] = agreement(tasks, fp32, int8, src.thresholds)
        checks["int8"]["min_agreement"] = min_agreement
        share = checks["int8"]["decision_agreement"]
        checks["int8"]["passed"] = share >= min_agreement
        if not share >= min_agreement:
            per_task = checks["int8"]["per_task"]
            raise ExportCheckError(
                f"int8 decisions agree with fp32 on only {share:.1%} of {checks['int8']['decisions']} decisions "
                f"({', '.join(f'{k} {v:.1%}' for k, v in per_task.items())}) on {len(texts)} sample texts, "
                f"below min_agreement={min_agreement:g}; export with quantize=false, or lower min_agreement "
                "knowingly - no bundle written"
            )
    return checks


AGREEMENT_DEFINITION = (
    "decisions both models make, over all decisions either makes: the class of each multi-class task per text; "
    "for multi-label tasks each label either model switches on at the bundle's thresholds (agreeing on no label "
    "counts as one decision) - so agreeing on the many labels neither predicts does not inflate it"
)


def agreement(tasks, logits_a: dict, logits_b: dict, thresholds: dict) -> dict:
    """How far two models' decisions agree (see AGREEMENT_DEFINITION), plus stricter and looser views."""
    da = _decisions(tasks, logits_a, thresholds)
    db = _decisions(tasks, logits_b, thresholds)
    per_task, exact, top = {}, {}, {}
    agree = total = 0
    for t in tasks:
        a, b = da[t.name], db[t.name]
        if t.multilabel:
            inter = (a & b).sum(-1)
            union = (a | b).sum(-1)
            none = union == 0
            n_agree, n_total = int(inter.sum() + none.sum()), int(union.sum() + none.sum())
            exact[t.name] = float((a == b).all(-1).mean())
        else:
            n_agree, n_total = int((a == b).sum()), int(a.size)
            exact[t.name] = float((a == b).mean())
        per_task[t.name] = n_agree / max(n_total, 1)
        top[t.name] = float((logits_a[t.name].argmax(-1) == logits_b[t.name].argmax(-1)).mean())
        agree += n_agree
        total += n_total
    diff = max(
        float(np.abs(activate(logits_a[t.name], t.multilabel) - activate(logits_b[t.name], t.multilabel)).max())
        for t in tasks
    )
    return {
        "decision_agreement": agree / max(total, 1),
        "decisions": total,
        "per_task": per_task,
        "exact_match": exact,
        "top_label_agreement": top,
        "max_abs_diff_scores": diff,
        "definition": AGREEMENT_DEFINITION,
    }


# --------------------------------------------------------------------------- export


def _check_export_args(opset, atol, min_agreement) -> None:
    if not isinstance(opset, int) or isinstance(opset, bool) or not 13 <= opset <= 20:
        raise EmotrainError(f"opset={opset!r}: use an ONNX opset between 13 and 20 (default {DEFAULT_OPSET})")
    if not (isinstance(atol, (int, float)) and atol > 0):
        raise EmotrainError(f"atol={atol!r}: must be a positive number (default {DEFAULT_ATOL:g})")
    if not (isinstance(min_agreement, (int, float)) and 0.0 <= min_agreement <= 1.0):
        raise EmotrainError(
            f"min_agreement={min_agreement!r}: must be a share in [0, 1] (default {DEFAULT_MIN_AGREEMENT:g})"
        )


def _load_exportable(source_path: Path, which: str, tokenizer):
    """The model to export, with a fast tokenizer and task names that are not ONNX input or result keys."""
    from emotrain.inference.source import load_source

    src = load_source(source_path, which=which, tokenizer=tokenizer)
    if not getattr(src.tokenizer, "is_fast", False) or getattr(src.tokenizer, "backend_tokenizer", None) is None:
        raise CheckpointError(
            f"{source_path}: the tokenizer is not a fast tokenizer; the bundle needs a {TOKENIZER_FILE}"
        )
    clash = [
        t.name for t in src.tasks if t.name in ("input_ids", "attention_mask", "token_type_ids", "tasks", "truncated")
    ]
    if clash:
        raise CheckpointError(
            f"task name {clash[0]!r} is reserved (an ONNX input or result key); rename the task and retrain"
        )
    return src


def _write_graphs(
    src, staging: Path, *, opset: int, with_tt: bool, quantize: bool, per_channel: bool, fuse: bool, steps: int
) -> tuple[dict | None, dict | None]:
    """Tokenizer files, the fp32 graph traced from the PyTorch model (rewritten by onnxruntime's transformer
    optimizer when `fuse`: off by default, it did not earn 5% on a CPU, BENCHMARKS.md) and (quantize) its int8
    version; returns the quantisation and fusion facts."""
    hf_tok = src.tokenizer
    # Tokenizer files first: the trace's example input comes from the bundle's own tokenizer.
    hf_tok.save_pretrained(str(staging))
    if not (staging / TOKENIZER_FILE).is_file():
        hf_tok.backend_tokenizer.save(str(staging / TOKENIZER_FILE))
    example = hf_tok(["Hello there, how are you?", "I'm fine"], padding=True, return_tensors="np")
    ids = np.asarray(example["input_ids"], dtype=np.int64)
    mask = np.asarray(example["attention_mask"], dtype=np.int64)
    log.info("export step 1/%d: tracing the fp32 ONNX graph (opset %d)", steps, opset)
    with _eager_attention(src.model) if fuse else contextlib.nullcontext():
        _export_onnx(src.model, staging / FP32_FILE, src.tasks, opset, with_tt, ids, mask)
    fusion = None
    if fuse:
        feeds = {
            "input_ids": ids,
            "attention_mask": mask,
            **({"token_type_ids": np.zeros_like(ids)} if with_tt else {}),
        }
        fusion = _fuse(staging / FP32_FILE, src.model, feeds, atol=1e-5)
        if fusion["applied"]:
            log.info("fused the graph: %s", ", ".join(f"{k} x{v}" for k, v in fusion["fused_operators"].items()))
        else:
            log.info("graph not fused: %s", fusion["reason"])
    if not quantize:
        return None, fusion
    log.info("export step 2/%d: quantising to int8 (onnxruntime dynamic, per_channel=%s)", steps, per_channel)
    return _quantize(staging / FP32_FILE, staging / INT8_FILE, per_channel), fusion


def _run_checks(
    src,
    staging: Path,
    texts: list[str],
    *,
    check: bool,
    quantize: bool,
    atol: float,
    min_agreement: float,
    pad_id: int,
    steps: int,
) -> dict:
    if not check:
        log.warning("export checks skipped (check=false): the bundle is not verified against PyTorch")
        return {"skipped": True}
    log.info("export step %d/%d: checking the bundle against PyTorch on %d texts", steps, steps, len(texts))
    checks = _self_check(src, staging, texts, quantized=quantize, atol=atol, min_agreement=min_agreement, pad_id=pad_id)
    if quantize:
        log.info(
            "export check: fp32 max |logit diff| %.2e (atol %g); int8 decision agreement %.1f%% (min %.0f%%)",
            checks["fp32"]["max_abs_diff_logits"],
            atol,
            100 * checks["int8"]["decision_agreement"],
            100 * min_agreement,
        )
    else:
        log.info("export check: fp32 max |logit diff| %.2e (atol %g)", checks["fp32"]["max_abs_diff_logits"], atol)
    return checks


def _test_facts(src) -> dict | None:
    """The test metrics of the exported weights, from the run that kept them (None when unknown: a checkpoint that
    is not its run's kept model, or no metrics.json)."""
    result = src.run_result
    if result is None or not result.test:
        return None
    return {
        "split_size": (result.data_sizes or {}).get("test"),
        "metrics": result.test,
        "metrics_at_0.5": result.test_at_05,
        "decisions": result.decisions,
        "best": result.best,
        "source": str(Path(src.run_dir) / METRICS_FILE) if src.run_dir else None,
    }


def _bundle_meta(
    src,
    source_path: Path,
    staging: Path,
    *,
    files: dict,
    opset: int,
    with_tt: bool,
    quantization,
    fusion: dict | None,
    checks: dict,
    pytorch: bool,
    pad_id: int,
) -> dict:
    """bundle.json: what the engine needs (tasks, thresholds, preprocessing, tokenizer, graph facts) and where it
    came from."""
    import onnx

    from emotrain.reproducibility import library_versions

    return {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_FORMAT_VERSION,
        "tasks": [t.to_dict() for t in src.tasks],
        "primary_task": src.primary_task,
        "thresholds": src.thresholds,
        "thresholds_source": src.thresholds_source,
        "preprocess": Preprocessor.from_dict(src.meta.get("preprocess") or {}).to_dict(),
        "max_length": src.max_length,
        "max_positions": max_positions(src.model.encoder.config),  # the longest input the graph can take
        "pooling": src.meta.get("pooling"),
        "tokenizer": {
            "file": TOKENIZER_FILE,
            "pad_token": src.tokenizer.pad_token,
            "pad_token_id": pad_id,
            "truncation": "right, to max_length tokens",
        },
        "onnx": {
            "files": files,
            "opset": opset,
            "inputs": ["input_ids", "attention_mask"] + (["token_type_ids"] if with_tt else []),
            "outputs": [t.name for t in src.tasks],
            "output_kind": "logits: softmax for multi-class tasks, sigmoid per label for multi-label tasks",
            "dynamic_axes": ["batch", "sequence"],
            "quantization": quantization,
            "fusion": fusion,
            "sizes_bytes": {f: (staging / f).stat().st_size for f in files.values()},
        },
        "checks": checks,
        "test": _test_facts(src),
        "pytorch_files": bool(pytorch),
        "backbone": src.meta.get("backbone"),
        "source": str(source_path.resolve()),
        "source_checkpoint": str(src.checkpoint) if src.checkpoint else src.meta.get("source_checkpoint"),
        "epoch": src.meta.get("epoch"),
        "val_loss": src.meta.get("val_loss"),
        "git": src.meta.get("git"),
        "versions": src.meta.get("versions"),
        "export_versions": {**library_versions(), "onnx": onnx.__version__},
        "exported_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def export_bundle(
    checkpoint,
    out=None,
    *,
    quantize: bool = True,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = DEFAULT_ATOL,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    samples=None,
    pytorch: bool = False,
    tokenizer=None,
    which: str = "best",
    per_channel: bool = True,
    fuse: bool = False,
) -> Path:
    """Export `checkpoint` (a run dir - its best checkpoint -, a checkpoint file, or a model/ export) to a bundle.

    out: the bundle directory (default :func:`default_out_dir`); an existing bundle there is replaced,
    any other non-empty directory is refused. samples: a list of texts or a text file (one per line)
    for the self-check (default :func:`sample_texts`). pytorch: also write config.json,
    model.safetensors and emotrain_model.json (the PyTorch engine can then load the bundle).
    tokenizer: a tokenizer directory for a bare checkpoint whose backbone tokenizer cannot be found.
    Returns the bundle directory. Raises ExportCheckError (nothing written) when a check fails.

    Steps: load the model, write the graphs (fp32, int8) into a staging directory, check them against
    PyTorch, add the PyTorch files if asked, write bundle.json, then move the finished bundle into place.
    """
    from emotrain.inference.model_dir import export_model

    _check_export_args(opset, atol, min_agreement)
    source_path = Path(checkpoint)
    out = Path(out) if out is not None else default_out_dir(source_path)
    _check_out_dir(out)
    texts = sample_texts(_read_samples(samples) if isinstance(samples, (str, os.PathLike)) else samples)
    src = _load_exportable(source_path, which, tokenizer)
    pad_id = src.tokenizer.pad_token_id if src.tokenizer.pad_token_id is not None else 0
    with_tt = _uses_token_type_ids(src.model)
    steps = 1 + bool(quantize) + bool(check)
    files = {"fp32": FP32_FILE, **({"int8": INT8_FILE} if quantize else {})}

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        quantization, fusion = _write_graphs(
            src,
            staging,
            opset=opset,
            with_tt=with_tt,
            quantize=quantize,
            per_channel=per_channel,
            fuse=fuse,
            steps=steps,
        )
        checks = _run_checks(
            src,
            staging,
            texts,
            check=check,
            quantize=bool(quantize),
            atol=float(atol),
            min_agreement=float(min_agreement),
            pad_id=pad_id,
            steps=steps,
        )
        if pytorch:
            if (source_path / "emotrain_model.json").is_file():
                for name in PYTORCH_FILES:
                    if (source_path / name).is_file():  # model/ folders before format 2 have no heads file
                        shutil.copy2(source_path / name, staging / name)
            else:
                export_model(src.checkpoint, staging, src.tokenizer, thresholds=src.thresholds)
        meta = _bundle_meta(
            src,
            source_path,
            staging,
            files=files,
            opset=opset,
            with_tt=with_tt,
            quantization=quantization,
            fusion=fusion,
            checks=checks,
            pytorch=pytorch,
            pad_id=pad_id,
        )
        write_json(staging / BUNDLE_META, meta)
        write_model_card(staging, src.run_result, meta=meta, bundle=True)
        publish_modes(staging)
        _install(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote bundle %s (%s)", out, ", ".join(sorted(files.values())))
    return out
