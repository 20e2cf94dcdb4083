"""Seeding and the facts a reader needs to reproduce a run."""

from __future__ import annotations

import logging
import os
import platform
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from emotrain.console import FILE_ONLY

log = logging.getLogger(__name__)


def set_seed(seed: int, deterministic: bool = False) -> torch.Generator:
    """Seed python, numpy, torch (and CUDA); optionally force deterministic kernels.

    Returns a torch.Generator seeded with `seed`, for DataLoaders.
    """
    os.environ["PYTHONHASHSEED"] = str(seed)  # inherited by worker processes
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True, warn_only=False)
    else:
        torch.use_deterministic_algorithms(False)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def git_info(path: Path | None = None) -> dict:
    """Commit hash and dirty flag of the repository holding `path` (default: emotrain's own checkout).

    An installed package (a wheel in site-packages) has no commit: None, even when its
    virtual environment sits inside some other git repository.
    """
    package = Path(__file__).resolve().parent
    cwd = Path(path) if path else package
    none = {"commit": None, "dirty": None}
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if top.returncode != 0:
            return none
        if path is None and Path(top.stdout.strip()).resolve() / package.name != package:
            return none  # the package is not this repository's own emotrain/ (e.g. .venv/lib/.../site-packages)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return none
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return none


def library_versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in (
        "emotrain",
        "torch",
        "transformers",
        "tokenizers",
        "hydra-core",
        "omegaconf",
        "numpy",
        "scikit-learn",
        "pandas",
        "onnxruntime",
    ):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def capture_rng_state() -> dict:
    """Python, numpy, torch CPU (and CUDA) RNG states as plain types + tensors (loadable with weights_only=True)."""
    version, internal, gauss = random.getstate()
    bit_gen, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [int(version), [int(x) for x in internal], None if gauss is None else float(gauss)],
        "numpy": {
            "bit_generator": str(bit_gen),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": None,
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of capture_rng_state. CUDA states are restored when CUDA is available and the device count matches."""
    if state.get("python") is not None:
        version, internal, gauss = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    if state.get("numpy") is not None:
        n = state["numpy"]
        keys = n["keys"].numpy() if isinstance(n["keys"], torch.Tensor) else np.asarray(n["keys"])
        np.random.set_state(
            (
                n["bit_generator"],
                keys.astype(np.uint32),
                int(n["pos"]),
                int(n["has_gauss"]),
                float(n["cached_gaussian"]),
            )
        )
    if state.get("torch") is not None:
        torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda])
        else:
            log.warning(
                "checkpoint has CUDA RNG states for %d devices, this machine has %d: CUDA RNG not restored",
                len(cuda),
                torch.cuda.device_count(),
            )


KNOWN_LIMITS = [
    "bitwise-identical results need the same hardware, library versions, thread count and precision",
    "deterministic=false allows non-deterministic kernels (CUDA atomics, cuDNN autotuning): expect small run-to-run "
    "differences on GPU",
    "bf16/fp16 autocast changes numerics: runs are only comparable at the same effective precision",
    "a resume continues the same random stream only from checkpoints written by emotrain (RNG states are stored in "
    "them)",
]


def reproducibility_info(seed: int | None = None, deterministic: bool | None = None) -> dict:
    """Seed, determinism flags, git commit/dirty flag, device, library versions and known limits in one dict."""
    info = {"seed": seed, "deterministic": deterministic, "git": git_info(), "versions": library_versions()}
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    info["flags"] = {
        "torch_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "torch_num_threads": torch.get_num_threads(),
        "PYTHONHASHSEED": os.environ.get("PYTHONHASHSEED"),
    }
    info["known_limits"] = list(KNOWN_LIMITS)
    return info


def print_reproducibility_info(seed: int | None = None, deterministic: bool | None = None, file=None) -> dict:
    """Log (or print to `file`) what a reader needs to reproduce a run; returns the same facts."""
    info = reproducibility_info(seed, deterministic)
    git = info["git"]
    commit = git["commit"] or "unknown (not a git checkout)"
    dirty = " (uncommitted changes)" if git["dirty"] else ""
    lines = [
        "reproducibility:",
        f"  seed: {seed}",
        f"  deterministic: {deterministic}",
        f"  git commit: {commit}{dirty}",
        f"  device: {info['device']}",
    ]
    lines += [f"  {k}: {v}" for k, v in info["flags"].items()]
    lines += [f"  {k}: {v}" for k, v in info["versions"].items() if v is not None]
    lines += [f"  limit: {x}" for x in info["known_limits"]]
    if file is None:
        log.info("\n".join(lines), extra=FILE_ONLY)  # the run's log and metrics.json keep it; the console stays short
    else:
        print("\n".join(lines), file=file)
    return info
