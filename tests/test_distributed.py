"""Data-parallel training (emotrain.distributed): sharded batches, no-op helpers, a 2-process gloo run.

The end-to-end tests launch `python -m torch.distributed.run --nproc_per_node=2` on CPU
(gloo) with the tiny backbone: `-m emotrain` itself (run dir, resume), and a 4-line wrapper
around the same entry point that turns the tiny encoder's dropout off, compared with a
single process trained on the same global batch (trainer.batch_size * 2). With dropout off, both runs see
exactly the same examples per optimiser step, and the per-rank loss weighting (examples on the rank * world /
examples in the global batch) makes DDP's averaged gradient the global-batch mean even for an
uneven last batch. What remains is float32 rounding in a different order (each rank pads its
own half of a batch to its own longest text, so the matmul shapes differ; the gradient is an
all-reduced sum of two halves instead of one sum), about 1e-7 relative per step. Tolerance:
rtol 1e-4 on every loss of the curve and on the final metrics; measured (torch 2.13 CPU, 3
epochs, 9 optimiser steps): worst relative difference 1.1e-7 on the loss curve, test loss
identical. Dropout is off for that comparison (its masks depend on the batch shape); the
resume test runs with it on.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, TINY, compose, subprocess_env
from emotrain import distributed as ddp
from emotrain.callbacks import hydra_argv
from emotrain.training.batching import LengthGroupedBatchSampler

# --------------------------------------------------------------------------- sampler


@pytest.mark.parametrize("n,batch,world", [(81, 8, 2), (89, 8, 2), (100, 5, 3), (7, 4, 4)])
@pytest.mark.parametrize("group", [True, False])
def test_rank_shares_partition_the_single_process_batches(n, batch, world, group):
    lengths = np.random.default_rng(0).integers(1, 60, size=n)
    single = LengthGroupedBatchSampler(lengths, batch * world, shuffle=True, group_by_length=group, seed=3)
    ranks = [
        LengthGroupedBatchSampler(lengths, batch, shuffle=True, group_by_length=group, seed=3, rank=r, world_size=world)
        for r in range(world)
    ]
    for epoch in (0, 1):
        for s in [single, *ranks]:
            s.set_epoch(epoch)
        expected = single.batches()
        per_rank = [s.batches() for s in ranks]
        shares = [s.shares() for s in ranks]
        assert all(len(s) == len(single) == len(expected) for s in ranks)  # every rank steps the same number of times
        for j, global_batch in enumerate(expected):
            real = []
            for r in range(world):
                n_local, n_global = shares[r][j]
                assert n_global == len(global_batch)
                assert 1 <= len(per_rank[r][j]) <= batch
                if n_local == 0:  # an empty share is one padding example of the same batch
                    assert per_rank[r][j] == global_batch[:1]
                else:
                    assert len(per_rank[r][j]) == n_local
                    real += per_rank[r][j]
            assert sorted(real) == sorted(global_batch)  # together: exactly the single-process batch
            assert sum(shares[r][j][0] for r in range(world)) == len(global_batch)


def test_sampler_skip_applies_to_rank_batches():
    lengths = np.arange(1, 50)
    s = LengthGroupedBatchSampler(lengths, 4, shuffle=True, group_by_length=True, seed=1, rank=1, world_size=2)
    s.set_epoch(2)
    full = s.batches()
    s.set_epoch(2, skip=3)
    assert list(s) == full[3:]
    with pytest.raises(ValueError):
        LengthGroupedBatchSampler(lengths, 4, True, True, 1, rank=2, world_size=2)


# --------------------------------------------------------------------------- single-process no-ops


def test_helpers_are_noops_in_one_process(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = ddp.init_distributed()
    assert (info.rank, info.world_size, info.local_rank, info.distributed, info.is_main) == (0, 1, 0, False, True)
    assert not torch.distributed.is_initialized()
    assert ddp.is_main_process() and ddp.get_world_size() == 1
    t = torch.tensor([1.5, 2.0])
    assert ddp.all_reduce_sum(t) is t and t.tolist() == [1.5, 2.0]
    assert ddp.broadcast_object({"a": 1}) == {"a": 1}
    assert ddp.any_rank(True) and not ddp.any_rank(False)
    ddp.barrier()
    with ddp.main_process_first():
        pass
    model = torch.nn.Linear(2, 2)
    assert ddp.wrap_model(model, info) is model
    ddp.cleanup()
    argv = ["emotrain", "trainer.epochs=1"]
    assert hydra_argv(argv) == argv  # not under torchrun: the command line is left alone
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert hydra_argv(argv) == [
        *argv,
        "++hydra.callbacks.emotrain_distributed._target_=emotrain.callbacks.DistributedRunDir",
    ]


# --------------------------------------------------------------------------- 2 processes, gloo

BASE = [
    *[o for o in TINY if not o.startswith(("trainer.batch_size=", "trainer.epochs="))],
    "trainer.num_threads=1",
    "trainer.epochs=3",
    "trainer.grad_accum_steps=2",  # exercises DDP's no_sync on accumulation micro-batches
    "data.max_train_examples=81",  # 81 = 5 * 16 + 1: the last global batch leaves rank 1 a padding example
    "data.max_eval_examples=40",
    "trainer.eval_batch_size=8",  # 5 eval batches: uneven over 2 ranks
    "checkpoint.save_top_k=-1",
    "checkpoint.export=false",
    "report=false",
]
PER_RANK_BATCH = 8
WORLD = 2

# Dropout masks depend on the batch shape, so runs with dropout can only match statistically.
# The comparison turns it off: trainer.dropout (the heads) by config, the tiny encoder's own
# dropout (BertConfig's default 0.1) by this wrapper around `python -m emotrain`.
NO_DROPOUT_LAUNCHER = """
import emotrain.models.backbones as backbones
from transformers import BertConfig

backbones.BertConfig = lambda **kw: BertConfig(**kw, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)

from emotrain.__main__ import main

main()
"""


def _no_dropout_config(**kw):
    from transformers import BertConfig

    return BertConfig(**kw, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(target: list[str], overrides: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m torch.distributed.run --nproc_per_node=2 <target> overrides` on CPU (gloo), one thread per rank."""
    env = subprocess_env(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(REPO_ROOT))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={WORLD}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        *target,
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    return proc


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.fixture(scope="module")
def no_dropout_run(tmp_path_factory):
    """A 2-process run without dropout, per-rank batch 8 (global 16), in a tmp hydra.run.dir."""
    tmp = tmp_path_factory.mktemp("ddp")
    launcher = tmp / "launch_no_dropout.py"
    launcher.write_text(NO_DROPOUT_LAUNCHER)
    run_dir = tmp / "run"
    overrides = [
        *BASE,
        "trainer.dropout=0.0",
        f"trainer.batch_size={PER_RANK_BATCH}",
        f"paths.cache_dir={tmp / 'cache'}",
        f"hydra.run.dir={run_dir}",
    ]
    _torchrun([str(launcher)], overrides, tmp)
    return run_dir


def test_two_process_gloo_run_matches_single_process(no_dropout_run, tmp_path, monkeypatch):
    """Loss curve (train and val loss per epoch), lr schedule and final metrics of the 2-process run
    against one process with trainer.batch_size=16 (the same global batch)."""
    import emotrain.models.backbones as backbones
    from emotrain.recipe import run

    dist = json.loads((no_dropout_run / "metrics.json").read_text())
    assert dist["world_size"] == WORLD and dist["effective_batch_size"] == PER_RANK_BATCH * 2 * WORLD

    monkeypatch.setattr(backbones, "BertConfig", _no_dropout_config)
    single_overrides = [*BASE, "trainer.dropout=0.0", f"trainer.batch_size={PER_RANK_BATCH * WORLD}"]
    single = run(compose(single_overrides, tmp_path), overrides=single_overrides)
    assert single["world_size"] == 1 and single["effective_batch_size"] == dist["effective_batch_size"]

    assert dist["global_steps"] == single["global_steps"] == 9  # 6 global batches / accum 2 -> 3 steps x 3 epochs
    assert dist["lr_per_step"] == single["lr_per_step"]
    assert dist["data_sizes"] == single["data_sizes"]
    curve = [(h["train_loss"], s["train_loss"]) for h, s in zip(dist["history"], single["history"])]
    curve += [(h["val"]["loss"], s["val"]["loss"]) for h, s in zip(dist["history"], single["history"])]
    assert len(curve) == 6
    worst = max(_rel(a, b) for a, b in curve)
    assert worst < 1e-4, f"loss curves differ: worst relative difference {worst:.2e}: {curve}"
    for key, value in single["test"].items():
        assert abs(dist["test"][key] - value) <= 1e-4 * max(abs(value), 1.0), (key, dist["test"][key], value)
    print(
        f"\nDDP vs single process: worst relative loss-curve difference {worst:.2e}; curve {curve}; "
        f"test loss {dist['test']['loss']!r} vs {single['test']['loss']!r}"
    )


def test_sharded_evaluation_equals_single_process_evaluation(no_dropout_run, tmp_path):
    """The validation metrics the 2 ranks computed together (sharded batches + all-reduce) are exactly
    what one process computes with the same weights."""
    from emotrain.checkpointing import load_checkpoint, resolve_checkpoint
    from emotrain.recipe import TrainingRecipe

    dist = json.loads((no_dropout_run / "metrics.json").read_text())
    ckpt = load_checkpoint(resolve_checkpoint(no_dropout_run, "last"))
    recipe = TrainingRecipe(compose([*BASE, f"trainer.batch_size={PER_RANK_BATCH * WORLD}"], tmp_path)).setup()
    recipe.model.load_state_dict(ckpt["model"])
    recipe.criterion.load_state_dict(ckpt["extra"]["criterion"])
    metrics, _, _ = recipe.evaluate(recipe.val_data)
    assert metrics == dist["final_val"]


def test_torchrun_run_dir_and_resume(tmp_path):
    """`python -m torch.distributed.run --nproc_per_node=2 -m emotrain` with the default run dir
    (outputs/${now:...}), dropout on: one run dir, written by rank 0 only; every rank loads the
    checkpoint, and resuming after epoch 1 reproduces the straight run exactly (per-rank dropout
    streams are reseeded from (seed, epoch, rank) at each epoch start)."""
    from emotrain.checkpointing import load_checkpoint

    overrides = [
        *BASE,
        "trainer.epochs=2",
        f"trainer.batch_size={PER_RANK_BATCH}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    _torchrun(["-m", "emotrain"], overrides, tmp_path)
    runs = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs  # all ranks agreed on rank 0's ${now:...}
    run_dir = runs[0]
    assert sorted(p.name for p in run_dir.iterdir()) == [
        ".emotrain.lock",
        ".hydra",
        "checkpoints",
        "emotrain.log",
        "metrics.json",
        "predictions_test.jsonl",
    ]
    assert "[rank 1]" not in (run_dir / "emotrain.log").read_text()
    straight = json.loads((run_dir / "metrics.json").read_text())
    index = json.loads((run_dir / "checkpoints" / "index.json").read_text())["checkpoints"]
    after_one = run_dir / "checkpoints" / next(r["path"] for r in index if r["epoch"] == 1)
    last = run_dir / "checkpoints" / next(r["path"] for r in index if r["epoch"] == 2)

    resumed_dir = tmp_path / "resumed"
    _torchrun(["-m", "emotrain"], [*overrides, f"resume={after_one}", f"hydra.run.dir={resumed_dir}"], tmp_path)
    resumed = json.loads((resumed_dir / "metrics.json").read_text())
    assert resumed["resumed_from"] == str(after_one)
    assert resumed["global_steps"] == straight["global_steps"]
    assert [h["val"] for h in resumed["history"]] == [h["val"] for h in straight["history"]]
    assert resumed["test"] == straight["test"]
    a = load_checkpoint(last)["model"]
    r_index = json.loads((resumed_dir / "checkpoints" / "index.json").read_text())["checkpoints"]
    b = load_checkpoint(resumed_dir / "checkpoints" / r_index[-1]["path"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
