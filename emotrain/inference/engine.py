"""The inference engine: text in, per-task labels and scores out.

One engine class, two backends:

- ``onnx``: an exported bundle run with onnxruntime. Needs only onnxruntime, tokenizers and
  numpy: this module and everything it imports on that path never import torch or
  transformers (a test runs it with both imports blocked).
- ``pytorch``: the trained MultiTaskModel itself (torch + transformers, imported lazily).

Both share the same text handling, so they differ only in the model that runs:

1. type checks (a non-string raises TypeError naming its index);
2. texts longer than ``max_chars`` characters are cut (with a logged warning) before
   preprocessing - the model reads at most ``max_length`` tokens anyway;
3. the training preprocessing (:class:`emotrain.preprocessing.Preprocessor`, settings from the
   bundle: NFKC, whitespace clean-up, PII scrub, ...);
4. the fast tokenizer (``tokenizers``) with truncation to ``max_length`` tokens, exactly as in
   training (special tokens included);
5. batches of texts sorted by token length (less padding), padded to the longest in the batch;
6. softmax (multi-class) or per-label sigmoid (multi-label) scores; decisions by argmax or by
   the per-label thresholds tuned on the validation split (a global ``threshold`` overrides them).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from emotrain.data.types import TaskSpec
from emotrain.errors import EmotrainError
from emotrain.inference.bundle import (
    BUNDLE_META,
    FP32_FILE,
    INT8_FILE,
    RESERVED_KEYS,
    BundleError,
    normalize_thresholds,
    read_bundle,
)
from emotrain.inference.predictions import prediction_records
from emotrain.preprocessing import Preprocessor
from emotrain.utils import one_line

log = logging.getLogger("emotrain.inference")

MODEL_TYPES = ("auto", "onnx", "pytorch")
# Longer texts are cut before preprocessing: the PII regexes over 100k characters would cost
# more than the model, and max_length tokens cover far fewer characters than this.
DEFAULT_MAX_CHARS = 10_000
# predict_batch tokenizes and length-sorts this many texts at a time (bounds memory on huge inputs).
WINDOW = 4096

__all__ = ["DEFAULT_MAX_CHARS", "EmotionInferenceEngine", "load_engine"]


# --------------------------------------------------------------------------- backends


# int8 graphs: a CPU without VNNI (an AVX2-only Zen 3, for one) multiplies u8 x s8 in 16-bit pairs that saturate,
# and decisions drift from fp32's (BENCHMARKS.md, "int8 on CPUs without VNNI"); this makes onnxruntime use u8 x u8
# there. No effect on CPUs with VNNI or AMX, nor on fp32 graphs.
SESSION_CONFIG = {"session.x64quantprecision": "1"}


class OnnxBackend:
    """onnxruntime session over a bundle's model.onnx / model.int8.onnx."""

    kind = "onnx"

    def __init__(
        self, model_path: Path, tasks: Sequence[TaskSpec], num_threads: int | None = None, providers: list | None = None
    ):
        import onnxruntime as ort

        self.model_path = Path(model_path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3  # errors only
        for key, value in SESSION_CONFIG.items():
            so.add_session_config_entry(key, value)
        if num_threads:
            so.intra_op_num_threads = int(num_threads)
            so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.model_path), so, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as e:  # InvalidProtobuf, Fail, NoSuchFile, ...
            raise BundleError(
                f"{self.model_path}: cannot load the ONNX model (truncated or corrupt? {type(e).__name__}: "
                f"{one_line(e, 120)}); re-export the bundle"
            ) from None
        inputs = {i.name for i in self.session.get_inputs()}
        missing = {"input_ids", "attention_mask"} - inputs
        unknown = inputs - {"input_ids", "attention_mask", "token_type_ids"}
        if missing or unknown:
            raise BundleError(
                f"{self.model_path}: unexpected graph inputs {sorted(inputs)} (need input_ids, attention_mask[, "
                "token_type_ids]); re-export the bundle"
            )
        self.use_token_type_ids = "token_type_ids" in inputs
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        for t in tasks:
            shape = outputs.get(t.name)
            if shape is None:
                raise BundleError(
                    f"{self.model_path}: no output for task {t.name!r} (outputs: {sorted(outputs)}); the model does "
                    f"not belong to this {BUNDLE_META}"
                )
            if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != t.num_labels):
                raise BundleError(
                    f"{self.model_path}: output {t.name!r} has shape {shape}, {BUNDLE_META} lists {t.num_labels} "
                    "labels; re-export the bundle"
                )
        self.output_names = [t.name for t in tasks]

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.use_token_type_ids:
            feeds["token_type_ids"] = np.zeros_like(input_ids)  # single-segment input, as in training
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))


class TorchBackend:
    """The PyTorch MultiTaskModel (eval mode, CPU, inference_mode)."""

    kind = "pytorch"

    def __init__(self, model, num_threads: int | None = None):
        import torch

        self._torch = torch
        self.model = model.eval()
        if num_threads:
            torch.set_num_threads(int(num_threads))  # process-wide, like any torch setting

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            out = self.model(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return {k: v.float().numpy() for k, v in out.items()}


# --------------------------------------------------------------------------- engine


def activate(logits: np.ndarray, multilabel: bool) -> np.ndarray:
    """Logits -> probabilities: sigmoid per label (multi-label), softmax over classes (multi-class)."""
    z = np.asarray(logits, dtype=np.float32)
    if multilabel:
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _check_threshold(threshold) -> float | None:
    if threshold is None:
        return None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(
            f"threshold={threshold!r}: must be a number in [0, 1] (or None for the tuned per-label thresholds)"
        )
    return float(threshold)


def _utf8_safe(text: str) -> str:
    """Replace lone surrogates (not encodable as UTF-8, which the tokenizer needs) by U+FFFD."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


class EmotionInferenceEngine:
    """Predict emotions (and every other trained task) for texts.

    Build one with :func:`load_engine`. ``predict(text)`` returns one result,
    ``predict_batch(texts)`` a list in input order. A result::

        {
          "emotion": "joy",                   # the primary task's top label (key = primary task name)
          "tasks": {
            "emotion": {                      # one entry per task, in training order
              "label": "joy",                 # highest-scoring label (always set)
              "labels": ["joy", "optimism"],  # the decision: multi-label -> every label whose score
                                              #   reaches its threshold, best first (may be empty);
                                              #   multi-class -> [label]
              "scores": {"admiration": 0.01, ..., "joy": 0.91, ...},   # every label, in label order:
                                              #   softmax (multi-class) or per-label sigmoid (multi-label)
            },
            "sentiment": {...},
          },
          "truncated": false,                 # the text was cut (max_chars characters or max_length tokens)
        }

    Multi-label decisions use the per-label thresholds tuned on the validation split
    (``engine.thresholds``); ``threshold=`` (here, in :func:`load_engine` or per call) replaces
    them with one value for every label. Empty or whitespace-only text is valid input: the model
    sees just its special tokens and returns its scores for content-free text.
    """

    def __init__(
        self,
        backend,
        tokenizer,
        *,
        tasks: Sequence[TaskSpec],
        primary_task: str,
        thresholds: dict | None,
        max_length: int,
        preprocess: dict | Preprocessor | None,
        pad_token_id: int = 0,
        threshold: float | None = None,
        max_chars: int = DEFAULT_MAX_CHARS,
        source: str | Path | None = None,
    ):
        self._backend = backend
        self.tasks = list(tasks)
        names = [t.name for t in self.tasks]
        if primary_task not in names:
            raise BundleError(f"primary task {primary_task!r} is not one of the tasks {names}")
        for n in names:
            if n in RESERVED_KEYS:
                raise BundleError(f"task name {n!r} is reserved (a result key); rename the task")
        self.primary_task = primary_task
        self.thresholds = normalize_thresholds(self.tasks, thresholds)
        self.threshold = _check_threshold(threshold)
        if not isinstance(max_length, int) or max_length < 2:
            raise ValueError(f"max_length={max_length!r}: must be an integer >= 2")
        if not isinstance(max_chars, int) or max_chars < 1:
            raise ValueError(f"max_chars={max_chars!r}: must be a positive integer")
        self.max_length = max_length
        self.max_chars = max_chars
        self.preprocessor = (
            preprocess if isinstance(preprocess, Preprocessor) else Preprocessor.from_dict(preprocess or {})
        )
        self.pad_token_id = int(pad_token_id)
        self._tokenizer = tokenizer
        tokenizer.no_padding()  # padding is done per length-sorted batch
        tokenizer.enable_truncation(max_length=max_length)
        self.model_type = backend.kind
        self.source = Path(source) if source is not None else None
        self._th_arrays = {k: np.asarray(v, dtype=np.float32) for k, v in self.thresholds.items()}

    # -- info
    @property
    def labels(self) -> dict[str, tuple[str, ...]]:
        return {t.name: t.labels for t in self.tasks}

    @property
    def model_file(self) -> Path | None:
        return getattr(self._backend, "model_path", None)

    @property
    def quantized(self) -> bool:
        f = self.model_file
        return f is not None and f.name == INT8_FILE

    def __repr__(self) -> str:
        what = self.model_file.name if self.model_file is not None else self.model_type
        return (
            f"EmotionInferenceEngine({self.model_type}, {what}, tasks={[t.name for t in self.tasks]}, "
            f"primary={self.primary_task!r})"
        )

    # -- prediction
    def predict(self, text: str, *, threshold: float | None = None) -> dict:
        """One text -> one result (see the class docstring)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        return self.predict_batch([text], batch_size=1, threshold=threshold)[0]

    def predict_batch(
        self, texts: Iterable[str], batch_size: int = 32, *, threshold: float | None = None
    ) -> list[dict]:
        """Texts -> results in input order. Internally sorted by token length, `batch_size` at a time."""
        probs, truncated = self.predict_scores(texts, batch_size=batch_size)
        return self.results(probs, truncated, threshold)

    def predict_scores(self, texts: Iterable[str], batch_size: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Raw scores for evaluation: ({task: float32 [n, num_labels]}, truncated bool [n]), input order."""
        texts = self._prepare(texts)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size={batch_size!r}: must be a positive integer")
        n = len(texts)
        probs = {t.name: np.zeros((n, t.num_labels), dtype=np.float32) for t in self.tasks}
        truncated = np.zeros(n, dtype=bool)
        for start in range(0, n, WINDOW):
            window = [t for t, _ in texts[start : start + WINDOW]]
            encodings = self._tokenizer.encode_batch(window)
            lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
            order = np.argsort(-lengths, kind="stable")  # longest first: padding stays minimal
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                width = int(lengths[idx].max())
                ids = np.full((len(idx), width), self.pad_token_id, dtype=np.int64)
                mask = np.zeros((len(idx), width), dtype=np.int64)
                for row, j in enumerate(idx):
                    seq = encodings[j].ids
                    ids[row, : len(seq)] = seq
                    mask[row, : len(seq)] = 1
                logits = self._backend.run(ids, mask)
                for t in self.tasks:
                    probs[t.name][start + idx] = activate(logits[t.name], t.multilabel)
            truncated[start : start + len(window)] = [
                bool(e.overflowing) or cut for e, (_, cut) in zip(encodings, texts[start : start + WINDOW])
            ]
        return probs, truncated

    def decide(self, probs: dict[str, np.ndarray], threshold: float | None = None) -> dict[str, np.ndarray]:
        """Decisions from scores: class ids [n] (multi-class) or 0/1 [n, C] (multi-label)."""
        override = _check_threshold(threshold) if threshold is not None else self.threshold
        out = {}
        for t in self.tasks:
            p = probs[t.name]
            if t.multilabel:
                th = override if override is not None else self._th_arrays[t.name]
                out[t.name] = (p >= th).astype(np.int64)
            else:
                out[t.name] = p.argmax(-1)
        return out

    # -- internals
    def _prepare(self, texts) -> list[tuple[str, bool]]:
        if isinstance(texts, (str, bytes)):
            raise TypeError(
                f"texts: expected a list of str, got a single {type(texts).__name__}; use predict() for one text"
            )
        try:
            texts = list(texts)
        except TypeError:
            raise TypeError(f"texts: expected a list of str, got {type(texts).__name__}") from None
        out = []
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}]: expected str, got {type(text).__name__}")
            cut = len(text) > self.max_chars
            if cut:
                log.warning(
                    "text %d: %d characters, truncated to the first %d (max_chars) before preprocessing; the model "
                    "reads at most %d tokens",
                    i,
                    len(text),
                    self.max_chars,
                    self.max_length,
                )
                text = text[: self.max_chars]
            out.append((_utf8_safe(self.preprocessor(text)), cut))
        return out

    def results(
        self, probs: dict[str, np.ndarray], truncated: np.ndarray, threshold: float | None = None
    ) -> list[dict]:
        """Results (the class docstring's schema) from predict_scores' output, decided at the engine's thresholds
        or `threshold`."""
        return prediction_records(self.tasks, self.primary_task, probs, self.decide(probs, threshold), truncated)


# --------------------------------------------------------------------------- loading


def _has_onnx(directory: Path) -> bool:
    return directory.is_dir() and ((directory / FP32_FILE).is_file() or (directory / INT8_FILE).is_file())


def _looks_like_torch_source(path: Path) -> bool:
    if path.is_file():
        return True
    return any((path / name).exists() for name in ("emotrain_model.json", "checkpoints", "model")) or any(
        path.glob("*.pt")
    )


def load_engine(
    path,
    model_type: str = "auto",
    *,
    quantized: bool = False,
    threshold: float | None = None,
    num_threads: int | None = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    providers: list | None = None,
) -> EmotionInferenceEngine:
    """Load an :class:`EmotionInferenceEngine`.

    path:
        ``model_type="onnx"``: a bundle directory (``bundle.json`` + ``model.onnx`` / ``model.int8.onnx``
        + ``tokenizer.json``), or a run directory holding one in ``bundle/``.
        ``model_type="pytorch"``: a run directory (its best checkpoint), a checkpoint file, a ``model/``
        export directory, or a bundle exported with ``pytorch=true``.
        ``model_type="auto"``: ONNX when the directory (or its ``bundle/``) has an ONNX model, else PyTorch.
    quantized:
        ONNX only. False (default): the fp32 model - identical decisions to PyTorch. True: the int8 model
        (faster and smaller; decisions agree with fp32 on the share the export check states in
        ``bundle.json["checks"]``). A bundle with only an int8 model uses it either way.
    threshold:
        One decision threshold for every label of the multi-label tasks, replacing the tuned per-label ones.
    num_threads:
        Intra-op threads (onnxruntime session; process-wide ``torch.set_num_threads`` for PyTorch).
        None: the library default (all cores).
    max_chars:
        Longer texts are cut to this many characters (with a logged warning) before preprocessing.

    Every unusable path raises a one-line :class:`emotrain.errors.EmotrainError`: BundleError for a bundle,
    CheckpointError for a checkpoint.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"model_type={model_type!r}: use one of {', '.join(MODEL_TYPES)}")
    threshold = _check_threshold(threshold)
    path = Path(path)
    if not path.exists():
        raise BundleError(
            f"model not found: {path}; pass a bundle directory (emotrain-export), a run directory or a checkpoint"
        )
    if path.is_file() and (path.suffix == ".onnx" or (path.parent / BUNDLE_META).is_file()):
        raise BundleError(
            f"{path} is a file of a bundle; pass its directory ({path.parent}), which holds {BUNDLE_META} and the "
            "tokenizer too"
        )
    onnx_dir = path
    if path.is_dir() and not (path / BUNDLE_META).is_file() and (path / "bundle" / BUNDLE_META).is_file():
        onnx_dir = path / "bundle"
    if model_type == "auto":
        if _has_onnx(onnx_dir):
            model_type = "onnx"
        elif _looks_like_torch_source(path):
            model_type = "pytorch"
        else:
            raise BundleError(
                f"{path}: neither an ONNX bundle ({FP32_FILE} / {INT8_FILE} + {BUNDLE_META}) nor a run directory, "
                "checkpoint or model/ export"
            )
    kwargs = {"threshold": threshold, "max_chars": max_chars}
    if model_type == "onnx":
        return _load_onnx(onnx_dir, quantized, num_threads, providers, **kwargs)
    if quantized:
        raise ValueError("quantized=True applies to ONNX bundles only; use model_type='onnx'")
    return _load_pytorch(path, num_threads, **kwargs)


def _load_onnx(path: Path, quantized: bool, num_threads, providers, **kwargs) -> EmotionInferenceEngine:
    from tokenizers import Tokenizer

    info = read_bundle(path)
    model_file = info.model_file(quantized)
    tok_file = path / info.tokenizer_file
    if not tok_file.is_file():
        raise BundleError(f"{tok_file}: missing; re-export the bundle")
    try:
        tokenizer = Tokenizer.from_file(str(tok_file))
    except Exception as e:
        raise BundleError(
            f"{tok_file}: cannot load the tokenizer (truncated or corrupt? {type(e).__name__}: {one_line(e, 100)}); "
            "re-export the bundle"
        ) from None
    try:
        preprocess = Preprocessor.from_dict(info.preprocess)
    except (TypeError, ValueError) as e:
        raise BundleError(
            f"{path / BUNDLE_META}: bad preprocess settings ({one_line(e, 120)}); re-export the bundle"
        ) from None
    backend = OnnxBackend(model_file, info.tasks, num_threads=num_threads, providers=providers)
    return EmotionInferenceEngine(
        backend,
        tokenizer,
        tasks=info.tasks,
        primary_task=info.primary_task,
        thresholds=info.thresholds,
        max_length=info.max_length,
        preprocess=preprocess,
        pad_token_id=info.pad_token_id,
        source=path,
        **kwargs,
    )


def _load_pytorch(path: Path, num_threads, **kwargs) -> EmotionInferenceEngine:
    try:
        from tokenizers import Tokenizer

        from emotrain.inference.source import load_source
    except ImportError as e:
        raise EmotrainError(
            f"model_type='pytorch' needs torch and transformers ({e}); install emotrain's training dependencies or "
            "use an ONNX bundle"
        ) from None
    src = load_source(path)
    backend_tok = getattr(src.tokenizer, "backend_tokenizer", None)
    if backend_tok is None:
        raise BundleError(
            f"{path}: the tokenizer is not a fast (tokenizers) tokenizer; the engine needs tokenizer.json"
        )
    tokenizer = Tokenizer.from_str(backend_tok.to_str())
    pad_id = src.tokenizer.pad_token_id if src.tokenizer.pad_token_id is not None else 0
    backend = TorchBackend(src.model, num_threads=num_threads)
    return EmotionInferenceEngine(
        backend,
        tokenizer,
        tasks=src.tasks,
        primary_task=src.primary_task,
        thresholds=src.thresholds,
        max_length=src.max_length,
        preprocess=src.meta.get("preprocess") or {},
        pad_token_id=pad_id,
        source=path,
        **kwargs,
    )
