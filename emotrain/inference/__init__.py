"""Serving trained emotrain models: ONNX bundles, the inference engine and its CLIs.

    from emotrain.inference import load_engine
    engine = load_engine("outputs/.../bundle")            # ONNX, fp32; quantized=True for int8
    engine.predict("I love it!")["emotion"]                 # -> "joy"
    engine.predict_batch(texts, batch_size=32)              # results in input order

Deployment needs only onnxruntime, tokenizers and numpy (``pip install emotrain[inference]``):
importing this package and running an ONNX engine never imports torch or transformers.
The exporter (``export_bundle``, ``python -m emotrain.export``) and the PyTorch engine do, lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emotrain.inference.bundle import BundleError, ExportCheckError, read_bundle

__all__ = [
    "BundleError",
    "EmotionInferenceEngine",
    "ExportCheckError",
    "export_bundle",
    "load_engine",
    "read_bundle",
]

_LAZY = {
    "EmotionInferenceEngine": "emotrain.inference.engine",
    "load_engine": "emotrain.inference.engine",
    "export_bundle": "emotrain.inference.onnx_export",
}

if TYPE_CHECKING:  # pragma: no cover
    from emotrain.inference.engine import EmotionInferenceEngine, load_engine
    from emotrain.inference.onnx_export import export_bundle


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'emotrain.inference' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
