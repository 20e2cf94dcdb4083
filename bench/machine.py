"""The machine a benchmark ran on, printed by every bench: machines here differ (Zen 4 with AVX-512 and native bf16,
Zen 3 with AVX2 only), so every figure must say where it came from."""

from __future__ import annotations

import os
import platform
import subprocess

FLAGS_OF_INTEREST = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")


def cpu() -> dict:
    """CPU model, the SIMD flags that matter for torch / onnxruntime, cores."""
    model, flags = platform.processor() or "unknown", set()
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            elif key.strip() == "Flags":
                flags = set(value.split())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"model": model, "flags": [f for f in FLAGS_OF_INTEREST if f in flags], "cpus": os.cpu_count()}


def versions(*packages: str) -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in packages or ("torch", "transformers", "onnxruntime", "accelerate", "emotrain"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def describe(*packages: str) -> str:
    c = cpu()
    try:
        import torch

        threads = f", torch threads {torch.get_num_threads()}"
    except ImportError:
        threads = ""
    flags = " ".join(c["flags"]) or "none of " + " ".join(FLAGS_OF_INTEREST)
    libs = ", ".join(f"{k} {v}" for k, v in versions(*packages).items() if v)
    return f"machine: {c['model']}, {c['cpus']} CPUs{threads}; flags: {flags}\nversions: {libs}"


if __name__ == "__main__":
    print(describe())
