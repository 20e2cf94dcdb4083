"""Command lines: ``emotrain-predict`` (serve a bundle from the shell) and ``emotrain-export``.

    emotrain-predict --model BUNDLE "I love it" "this is awful"
    cat texts.jsonl | emotrain-predict --model BUNDLE --quantized > predictions.jsonl
    emotrain-export checkpoint=outputs/2024-01-01/12-00-00 [out=DIR] [quantize=false] [opset=17]

Errors are one line on stderr (``emotrain-predict: error: ...``) and a non-zero exit status
(1: the model or the input cannot be used; 2: bad command line), never a traceback.
``emotrain-predict`` with ``--model-type onnx`` (or an ONNX bundle under ``auto``) does not
import torch or transformers.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from emotrain.console import progress
from emotrain.errors import TRAINING_PACKAGES, EmotrainError, MissingDependencyError, require_packages
from emotrain.utils import OneLineArgumentParser

log = logging.getLogger("emotrain.inference.cli")

PREDICT = "emotrain-predict"
EXPORT = "emotrain-export"


class _Formatter(logging.Formatter):
    def __init__(self, prog: str):
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prog}: {record.levelname.lower()}: {record.getMessage()}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


@contextmanager
def logging_to_stderr(prog: str, level: int):
    """Log records of the emotrain loggers as `prog: level: message` lines while the command runs."""
    handler = _StderrHandler()
    handler.setFormatter(_Formatter(prog))
    logger = logging.getLogger("emotrain")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


def _fail(prog: str, message, status: int = 1):
    text = " ".join(str(message).split()) or type(message).__name__
    print(f"{prog}: error: {text}", file=sys.stderr)
    sys.exit(status)


# --------------------------------------------------------------------------- predict


def _predict_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog=PREDICT,
        description="Predict emotions with an exported emotrain bundle. Texts come from the arguments, "
        'or from stdin (one per line: JSON objects with a "text" field - other fields are copied to the '
        "output - or plain text lines; blank lines are skipped). Writes one JSON result per text to stdout.",
    )
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify (default: read stdin)")
    p.add_argument(
        "--model",
        "-m",
        required=True,
        help="bundle directory (emotrain-export), or for --model-type pytorch a run directory / checkpoint",
    )
    p.add_argument(
        "--model-type",
        choices=("auto", "onnx", "pytorch"),
        default="auto",
        help="default: onnx when the directory has an ONNX model",
    )
    p.add_argument("--quantized", action="store_true", help="run the int8 model (faster; default: fp32)")
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="one decision threshold for every multi-label label (default: the tuned per-label thresholds)",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument(
        "--max-chars",
        type=int,
        default=None,
        help="cut longer texts (with a warning) before preprocessing (default 10000)",
    )
    p.add_argument(
        "--input",
        choices=("auto", "jsonl", "lines"),
        default="auto",
        help="stdin format (auto: lines starting with '{' are JSON)",
    )
    p.add_argument("--chunk", type=int, default=1024, help="stdin texts predicted per round (output streams per round)")
    p.add_argument("--quiet", "-q", action="store_true", help="no warnings on stderr")
    return p


def _utf8_line(raw: bytes | str, where: str) -> str:
    """A line as UTF-8 text; invalid bytes become U+FFFD with one warning naming the line (never echoed raw)."""
    if isinstance(raw, str):  # a text stream; undecodable bytes arrive as lone surrogates (surrogateescape)
        try:
            raw.encode("utf-8")
            return raw
        except UnicodeEncodeError:
            raw = (
                raw.encode("utf-8", "surrogateescape")
                if all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in raw)
                else raw.encode("utf-8", "surrogatepass")
            )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        log.warning(
            "%s: bytes %r at offset %d are not valid UTF-8; replaced by U+FFFD (send UTF-8 text)",
            where,
            raw[e.start : e.end][:8],
            e.start,
        )
        return raw.decode("utf-8", "replace")


def _stdin_records(stream, mode: str) -> Iterator[tuple[dict, str]]:
    source = getattr(stream, "buffer", stream)  # bytes when possible: decoding is ours, so bad bytes are named
    for lineno, raw in enumerate(source, start=1):
        line = _utf8_line(raw, f"stdin line {lineno}").rstrip("\r\n")
        if lineno == 1:
            line = line.removeprefix("\ufeff")  # a byte-order mark (Windows editors) is not part of the first text
        if not line.strip():
            continue
        if mode == "jsonl" or (mode == "auto" and line.lstrip().startswith("{")):
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise EmotrainError(
                    f"stdin line {lineno}: not valid JSON ({e}); send one JSON object per line, or plain text lines"
                ) from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise EmotrainError(f'stdin line {lineno}: needs a JSON object with a string "text" field')
            yield obj, obj["text"]
        else:
            yield {"text": line}, line


def _jsonl_writer(stream):
    """Writes one JSON object per line as UTF-8 whatever the locale; a string JSON cannot carry as UTF-8
    (a lone surrogate from an escaped "\\ud800") is written with \\u escapes instead."""
    binary = getattr(stream, "buffer", None)

    def write(obj: dict) -> None:
        line = json.dumps(obj, ensure_ascii=False)
        try:
            data = (line + "\n").encode("utf-8")
        except UnicodeEncodeError:
            data = (json.dumps(obj) + "\n").encode("ascii")
        if binary is not None:
            stream.flush()
            binary.write(data)
            binary.flush()
        else:
            stream.write(data.decode("utf-8"))
            stream.flush()

    return write


def _chunks(records: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for r in records:
        chunk.append(r)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_main(argv: list[str] | None = None) -> int:
    """Console script ``emotrain-predict``."""
    args = _predict_parser().parse_args(argv)
    with logging_to_stderr(PREDICT, logging.ERROR if args.quiet else logging.INFO):
        return _predict(args)


def _predict(args) -> int:
    for name in ("batch_size", "chunk", "num_threads", "max_chars"):
        value = getattr(args, name)
        if value is not None and value < 1:
            _fail(PREDICT, f"--{name.replace('_', '-')} must be >= 1, got {value}", 2)
    try:
        from emotrain.inference.engine import DEFAULT_MAX_CHARS, load_engine

        engine = load_engine(
            args.model,
            args.model_type,
            quantized=args.quantized,
            threshold=args.threshold,
            num_threads=args.num_threads,
            max_chars=args.max_chars or DEFAULT_MAX_CHARS,
        )
        if args.texts:
            texts = [_utf8_line(t, f"argument {i + 1}") for i, t in enumerate(args.texts)]
            rounds = [[({"text": t}, t) for t in texts]]
        else:
            rounds = _chunks(_stdin_records(sys.stdin, args.input), args.chunk)
        write = _jsonl_writer(sys.stdout)
        # On stderr (stdout is the JSON Lines): a bar on a terminal, else a line every 30 s of a long stream.
        shown = progress(desc="predicting", unit="texts", enabled=not args.quiet and not args.texts, logger=log)
        for chunk in rounds:
            results = engine.predict_batch([text for _, text in chunk], batch_size=args.batch_size)
            for (record, _), result in zip(chunk, results):
                write({**record, **result})
            shown.update(len(chunk))
        shown.close()
    except (EmotrainError, ValueError, TypeError, OSError) as e:
        if isinstance(e, BrokenPipeError):
            return _broken_pipe()
        _fail(PREDICT, e)
    except KeyboardInterrupt:
        return 130
    return 0


def _broken_pipe() -> int:
    # The reader went away (e.g. `| head`): stop quietly, and keep Python from complaining at exit.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    return 0


# --------------------------------------------------------------------------- export

EXPORT_KEYS = {
    "checkpoint": (
        "path",
        "a run directory (its best checkpoint), a checkpoint file or a model/ export directory (required)",
    ),
    "out": (
        "path",
        "bundle directory (default: <run dir>/bundle, or <checkpoint stem>_bundle next to a checkpoint file)",
    ),
    "quantize": ("bool", "also write model.int8.onnx (onnxruntime dynamic quantization), default true"),
    "opset": ("int", "ONNX opset, default 17"),
    "check": ("bool", "compare ONNX with PyTorch on sample texts and fail on a mismatch, default true"),
    "atol": ("float", "max abs logit difference fp32 ONNX vs PyTorch, default 1e-4"),
    "min_agreement": (
        "float",
        "min share of int8 decisions that fp32 makes too, default 0.9 (see bundle.json checks.int8.definition)",
    ),
    "samples": ("path", "text file (one per line) added to the built-in check texts"),
    "pytorch": (
        "bool",
        "also write the PyTorch model folder (the run's model/ files), default false",
    ),
    "tokenizer": ("path", "tokenizer directory, for a bare checkpoint whose backbone tokenizer cannot be found"),
    "which": ("str", "best (default) or last checkpoint of a run directory"),
    "per_channel": ("bool", "per-channel int8 weight scales (more accurate, same speed), default true"),
    "fuse": ("bool", "fuse attention, layer norms and GELU with onnxruntime's optimizer (checked), default false"),
}

EXPORT_USAGE = (
    f"usage: {EXPORT} checkpoint=PATH [key=value ...]\n"
    f"       python -m emotrain.export checkpoint=PATH [key=value ...]\n\n"
    "Export a trained model to a deployment bundle (model.onnx, model.int8.onnx, tokenizer.json, "
    "bundle.json).\n\nkeys:\n" + "\n".join(f"  {k:<14} {help}" for k, (_, help) in EXPORT_KEYS.items())
)

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def parse_export_args(argv: list[str]) -> dict:
    """`key=value` arguments (Hydra style) -> keyword arguments of export_bundle. Raises ValueError."""
    out: dict = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        key = key.strip().lstrip("+")
        if not sep or not key:
            raise ValueError(f"{arg!r}: expected key=value (e.g. checkpoint=outputs/RUN)")
        if key not in EXPORT_KEYS:
            close = difflib.get_close_matches(key, EXPORT_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown key {key!r}{hint}; known keys: {', '.join(EXPORT_KEYS)}")
        kind = EXPORT_KEYS[key][0]
        raw = value.strip()
        if raw.lower() in ("null", "none", "~") and kind in ("path", "str"):
            out[key] = None
            continue
        try:
            if kind == "bool":
                if raw.lower() not in _TRUE | _FALSE:
                    raise ValueError
                out[key] = raw.lower() in _TRUE
            elif kind == "int":
                out[key] = int(raw)
            elif kind == "float":
                out[key] = float(raw)
            else:
                if not raw:
                    raise ValueError
                out[key] = raw
        except ValueError:
            expected = (
                "true or false" if kind == "bool" else "a non-empty value" if kind in ("path", "str") else f"a {kind}"
            )
            raise ValueError(f"{key}={value!r}: expected {expected}") from None
    if out.get("which") not in (None, "best", "last"):
        raise ValueError(f"which={out['which']!r}: use best or last")
    if not out.get("checkpoint"):
        raise ValueError("checkpoint=PATH is required (a run directory, checkpoint file or model/ directory)")
    return out


def export_main(argv: list[str] | None = None) -> int:
    """Console script ``emotrain-export`` / ``python -m emotrain.export``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(EXPORT_USAGE)
        return 0
    try:
        kwargs = parse_export_args(argv)
    except ValueError as e:
        _fail(EXPORT, f"{e} (see {EXPORT} --help)", 2)
    try:
        require_packages("exporting a bundle (emotrain-export)", {**TRAINING_PACKAGES, "onnx": "onnx"})
    except MissingDependencyError as e:
        _fail(EXPORT, e, 2)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with logging_to_stderr(EXPORT, logging.INFO):
        try:
            from emotrain.inference.onnx_export import export_bundle

            checkpoint = kwargs.pop("checkpoint")
            out = export_bundle(checkpoint, **kwargs)
        except (EmotrainError, OSError, ValueError) as e:
            _fail(EXPORT, e)
        except KeyboardInterrupt:
            return 130
    meta = json.loads((out / "bundle.json").read_text(encoding="utf-8"))
    checks = meta.get("checks") or {}
    line = f"bundle: {out}"
    if "fp32" in checks:
        line += f"  fp32 max|diff|={checks['fp32']['max_abs_diff_logits']:.2e}"
    if "int8" in checks:
        line += f"  int8 agreement={checks['int8']['decision_agreement']:.1%}"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(predict_main())
