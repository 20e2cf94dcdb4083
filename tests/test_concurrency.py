"""Concurrent sweeps and processes never write into each other's directories or caches.

- A joblib sweep with 2 workers and a second (basic) sweep, launched at the same moment from one
  directory and sharing one cache (EMOTRAIN_CACHE), all with freeze=full so every job reads and
  writes the same frozen-encoder feature cache key: each job's directory holds only its own
  results, and each job's metrics equal a solo run's.
- A stress test of FeatureCache / TokenCache: several processes reading and writing the same keys
  at once (one of them SIGKILLed half-way through a write) always get exact values, and the cache
  only ever holds complete files.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY, compose, subprocess_env

# Heads only (freeze=full): the jobs share the cached features of one encoder.
FROZEN = [
    *TINY,
    "trainer.num_threads=1",
    "deterministic=true",
    "freeze=full",
    "trainer.epochs=2",
    "data.max_train_examples=64",
    "data.max_eval_examples=32",
    "checkpoint.export=false",
    "report=false",
]
LRS_A = ["0.01", "0.03"]  # the joblib sweep
LR_B = "0.01"  # the other sweep: the same job as A's first, run at the same time


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cwd = tmp_path_factory.mktemp("concurrent")
    cache = cwd / "shared_cache"
    commands = {
        "joblib": ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"optim.lr={','.join(LRS_A)}", *FROZEN],
        "basic": ["-m", f"optim.lr={LR_B}", *FROZEN],
    }
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "emotrain", *args],
            cwd=cwd,
            env=subprocess_env(cache),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in commands.items()
    }
    results = {name: (p.wait(timeout=420), *p.communicate()) for name, p in procs.items()}
    sweep_dirs = sorted(p.parent for p in (cwd / "multirun").glob("*/*/multirun.yaml"))
    return cwd, cache, results, sweep_dirs


@pytest.fixture(scope="module")
def solo(tmp_path_factory):
    """Each configuration alone, in this process, with a cache of its own."""
    import torch

    from emotrain.recipe import run

    threads = torch.get_num_threads()
    out = {}
    try:
        for lr in sorted(set(LRS_A) | {LR_B}):
            work = tmp_path_factory.mktemp(f"solo_{lr}")
            overrides = [*FROZEN, f"optim.lr={lr}"]
            out[lr] = run(compose(overrides, work), overrides)
    finally:
        torch.set_num_threads(threads)  # trainer.num_threads=1 must not slow the rest of the session
    return out


def _jobs(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if p.is_dir() and (p / ".hydra").is_dir())


def test_two_sweeps_at_once_keep_to_their_own_directories(sweeps):
    cwd, _, results, sweep_dirs = sweeps
    for name, (code, out, err) in results.items():
        assert code == 0, f"{name}: {out[-2000:]}\n{err[-3000:]}"
        assert "Traceback" not in err
    assert "Joblib.Parallel(n_jobs=2" in results["joblib"][1]
    assert len(sweep_dirs) == 2, sweep_dirs
    expected = {tuple(LRS_A), (LR_B,)}
    seen = set()
    all_job_dirs = [job for sweep in sweep_dirs for job in _jobs(sweep)]
    for sweep in sweep_dirs:
        lrs = []
        for job in _jobs(sweep):
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            lr = next(o.split("=", 1)[1] for o in overrides if o.startswith("optim.lr="))
            lrs.append(lr)
            metrics = json.loads((job / "metrics.json").read_text())
            assert metrics["status"] == "completed" and f"optim.lr={lr}" in metrics["overrides"]
            assert metrics["config"]["optim"]["lr"] == float(lr) and metrics["config"]["paths"]["output_dir"] == str(
                job
            )
            # its checkpoints are its own: trained with its learning rate, written under its directory
            from emotrain.checkpointing import load_checkpoint

            files = sorted((job / "checkpoints").glob("*.pt"))
            assert files and all(load_checkpoint(p)["hyperparameters"]["optim"]["lr"] == float(lr) for p in files)
            # nothing in its log or files mentions another job's directory
            log = (job / "emotrain.log").read_text()
            others = [str(o) for o in all_job_dirs if o != job]
            assert not any(o in log for o in others)
            assert "frozen-encoder features" in log
        seen.add(tuple(sorted(lrs)))
    assert seen == {tuple(sorted(x)) for x in expected}


def test_every_job_equals_a_solo_run(sweeps, solo):
    _, _, results, sweep_dirs = sweeps
    assert all(code == 0 for code, _, _ in results.values())
    n = 0
    for sweep in sweep_dirs:
        for job in _jobs(sweep):
            metrics = json.loads((job / "metrics.json").read_text())
            lr = next(o.split("=", 1)[1] for o in metrics["overrides"] if o.startswith("optim.lr="))
            alone = solo[lr]
            assert metrics["test"] == alone["test"], (job, lr)
            assert [h["val"] for h in metrics["history"]] == [h["val"] for h in alone["history"]]
            n += 1
    assert n == len(LRS_A) + 1


def test_shared_cache_holds_only_complete_files(sweeps):
    _, cache, _, _ = sweeps
    chunks = list((cache / "features").rglob("*.npz"))
    tokens = list((cache / "tokens").glob("*.npz"))
    assert chunks and tokens
    for path in chunks + tokens:
        with np.load(path, allow_pickle=False) as z:
            assert z.files
    leftovers = [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".npz"]
    assert not leftovers, leftovers


# --------------------------------------------------------------------------- cache stress test

TEXTS = [f"text number {i} " + "word " * (i % 7) for i in range(300)]
TOKEN_LISTS = [TEXTS[:100], TEXTS[50:250], TEXTS[::3]]  # every process encodes these: the same keys
MODEL_KEY = "m" * 64
DIM = 8


def _feature(text: str) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def _token_ids(text: str, max_length: int) -> np.ndarray:
    return np.frombuffer(hashlib.sha256(text.encode()).digest(), dtype=np.uint8)[: 3 + len(text) % max_length].astype(
        np.int64
    )


class _Tokenizer:
    def get_vocab(self):
        return {"[PAD]": 0, "word": 1}


def _encode(tokenizer, texts, max_length):
    return [_token_ids(t, max_length) for t in texts]


def _worker(cache_dir: str, seed: int, rounds: int, barrier, results, die_in_write: bool) -> None:
    import logging

    from emotrain.training import caches

    warnings = []

    class Catch(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    logging.getLogger("emotrain.training.caches").addHandler(Catch(level=logging.WARNING))
    if die_in_write:  # half a chunk file written, then SIGKILL: the temp file stays behind
        real_write = caches.atomic_write

        def half_then_die(path, write, binary=False):
            def half(fh):
                import io

                buf = io.BytesIO()
                write(buf)
                fh.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                fh.flush()
                os.fsync(fh.fileno())
                os.kill(os.getpid(), signal.SIGKILL)

            return real_write(path, half, binary)

        caches.atomic_write = half_then_die
    rng = np.random.default_rng(seed)
    bad = 0
    barrier.wait()
    for _ in range(rounds):
        idx = rng.choice(len(TEXTS), size=40, replace=False)
        texts = [TEXTS[i] for i in idx]
        feats, _ = caches.FeatureCache(cache_dir, MODEL_KEY).lookup(
            texts, lambda missing, texts=texts: np.stack([_feature(texts[i]) for i in missing])
        )
        bad += int(not all(np.array_equal(f, _feature(t)) for f, t in zip(feats, texts)))
        texts = TOKEN_LISTS[int(rng.integers(len(TOKEN_LISTS)))]
        seqs = caches.TokenCache(cache_dir).encode(_Tokenizer(), texts, 16, _encode)
        bad += int(not all(np.array_equal(s, _token_ids(t, 16)) for s, t in zip(seqs, texts)))
    results.put((seed, bad, warnings))


def test_cache_stress_many_processes_same_keys(tmp_path):
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("needs the fork start method")
    ctx = mp.get_context("fork")
    n = 4
    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(tmp_path), seed, 12, barrier, results, False)) for seed in range(n)]
    procs.append(ctx.Process(target=_worker, args=(str(tmp_path), 99, 12, barrier, results, True)))
    for p in procs:
        p.start()
    reports = [results.get(timeout=120) for _ in range(n)]
    for p in procs:
        p.join(timeout=60)
    assert procs[-1].exitcode == -signal.SIGKILL, "the writer that should die mid-write did not"
    assert all(p.exitcode == 0 for p in procs[:-1]), [p.exitcode for p in procs]
    for seed, bad, warnings in reports:
        assert bad == 0, f"process {seed} got wrong values"
        assert not warnings, f"process {seed} met an unreadable cache file: {warnings}"
    # only complete files under cache names; the killed writer's half file is a hidden temporary
    finals = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert finals and all(p.suffix == ".npz" for p in finals)
    for path in finals:
        with np.load(path, allow_pickle=False) as z:
            assert z.files
    assert [p for p in tmp_path.rglob(".*.tmp")], "expected the killed writer's temporary file"
    # and a fresh reader gets every value right
    from emotrain.training.caches import FeatureCache

    feats, computed = FeatureCache(tmp_path, MODEL_KEY).lookup(
        TEXTS, lambda missing: np.stack([_feature(TEXTS[i]) for i in missing])
    )
    assert all(np.array_equal(f, _feature(t)) for f, t in zip(feats, TEXTS))
