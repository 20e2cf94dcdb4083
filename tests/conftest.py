"""Shared fixtures: compose configs with Hydra's compose API and run short real trainings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "emotrain" / "conf"
GOEMOTIONS_DIR = Path(os.environ.get("EMOTRAIN_GOEMOTIONS_DIR", REPO_ROOT.parent / "shared" / "data" / "goemotions"))

# Quick, deterministic settings for real-but-short trainings with the tiny backbone.
TINY = [
    "backbone=tiny",
    "precision=fp32",
    "trainer.epochs=1",
    "trainer.batch_size=16",
    "trainer.progress=false",
    "optim.fused=false",
]


def quick(*extra: str, checkpoints: bool = False, report: bool = False, max_eval: int = 16) -> list[str]:
    """Overrides of a real-but-short training: the tiny backbone, fp32, one epoch, one thread (the CPU is shared), no
    checkpoints or report unless asked, the eval splits capped; then `extra`. Each run takes a fraction of a second."""
    return [
        *TINY,
        "trainer.num_threads=1",
        f"data.max_eval_examples={max_eval}",
        *([] if checkpoints else ["checkpoint=none"]),
        *([] if report else ["report=false"]),
        *extra,
    ]


QUICK = quick()


def subprocess_env(cache: Path | None = None, **extra: str) -> dict:
    """The environment of an emotrain subprocess in the tests: offline, quiet tokenizers, its own cache, the user's
    HYDRA_FULL_ERROR dropped (the one-line errors are under test); `extra` on top."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("HYDRA_FULL_ERROR", None)
    if cache is not None:
        env["EMOTRAIN_CACHE"] = str(cache)
    return {**env, **extra}


def run_emotrain(
    args: list[str], cwd: Path, *, timeout: int = 240, cache: Path | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """`python -m emotrain ARGS` from `cwd`, as a user runs it (the package finds its configs itself), offline; the
    token cache in `cache` (default: cwd/cache)."""
    env = subprocess_env(cache if cache is not None else cwd / "cache")
    return subprocess.run(
        [sys.executable, "-m", "emotrain", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _restore_threads():
    """trainer.num_threads calls torch.set_num_threads for the whole process: put it back."""
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def make_recipe(overrides: list[str], tmp_path):
    """A set-up (not yet trained) TrainingRecipe on QUICK settings plus `overrides`."""
    from emotrain.recipe import TrainingRecipe

    return TrainingRecipe(compose([*QUICK, *overrides], tmp_path), overrides).setup()


def compose(overrides: list[str] | None = None, tmp_path: Path | None = None):
    """Compose conf/train.yaml as the CLI would, with run paths pointed at tmp_path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    import emotrain.config  # noqa: F401

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=list(overrides or []))
    with open_dict(cfg):
        out = Path(tmp_path) if tmp_path else Path.cwd()
        cfg.paths.output_dir = str(out / "run")
        cfg.paths.root_dir = str(REPO_ROOT)
        cfg.paths.cache_dir = str(out / "cache")
    return cfg


def train(overrides: list[str], tmp_path: Path) -> dict:
    from emotrain.recipe import run

    cfg = compose(overrides, tmp_path)
    return run(cfg, overrides=overrides)


@pytest.fixture
def goemotions_dir() -> Path:
    if not (GOEMOTIONS_DIR / "train.tsv").is_file():
        pytest.skip(f"GoEmotions not found at {GOEMOTIONS_DIR}")
    return GOEMOTIONS_DIR


@pytest.fixture
def goemotions_slice(tmp_path_factory, goemotions_dir) -> Path:
    """First rows of each shared GoEmotions split, copied into a temp dir (never into the repo)."""
    return copy_goemotions_slice(goemotions_dir, tmp_path_factory.mktemp("goemotions_slice"))


def copy_goemotions_slice(src: Path, out: Path) -> Path:
    """The first 400 / 120 / 120 rows of train / dev / test and labels.txt, copied into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    for name, n in (("train.tsv", 400), ("dev.tsv", 120), ("test.tsv", 120)):
        with open(src / name, encoding="utf-8") as fh:
            lines = [next(fh) for _ in range(n)]
        (out / name).write_text("".join(lines), encoding="utf-8")
    (out / "labels.txt").write_text((src / "labels.txt").read_text(encoding="utf-8"), encoding="utf-8")
    return out
