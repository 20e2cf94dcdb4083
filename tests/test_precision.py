"""Device and precision: get_device, resolve_precision, MixedPrecisionTrainer's step order and
skip counting, bf16 / auto / fp16-fallback trainings on the CPU, and the design card's example."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys

import pytest
import torch

import emotrain.training.precision as precision_mod
from conftest import make_recipe, subprocess_env
from emotrain.training.precision import cpu_supports_bf16, resolve_precision

CPU = torch.device("cpu")
NATIVE_BF16 = cpu_supports_bf16()


def record_head_dtypes(model) -> list[torch.dtype]:
    """dtypes of one head's outputs, call by call: shows which autocast the forward ran under."""
    seen: list[torch.dtype] = []
    model.heads["emotion"].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    return seen


# ============================================================================ API


def test_training_package_exposes_get_device_and_mixed_precision_trainer():
    from emotrain.training import MixedPrecisionTrainer, get_device

    device, use_amp = get_device()
    assert isinstance(device, torch.device) and isinstance(use_amp, bool)
    for method in ("autocast", "scale_loss", "step", "update"):
        assert callable(getattr(MixedPrecisionTrainer, method)), method


@pytest.mark.parametrize("native", [True, False])
def test_get_device_on_cpu_uses_amp_only_with_native_bf16(native, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: native)
    assert precision_mod.get_device() == (CPU, native)


def test_get_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert precision_mod.get_device() == (torch.device("cuda"), True)
    assert resolve_precision("auto", torch.device("cuda")) == ("fp16", None)  # CUDA: fp16 with a GradScaler


@pytest.mark.parametrize(
    "requested,native,effective,warning",
    [
        ("auto", True, "bf16", None),
        ("auto", False, "fp32", None),
        ("fp32", True, "fp32", None),
        ("bf16", True, "bf16", None),
        ("bf16", False, "bf16", "no native bf16"),
        ("fp16", True, "bf16", "precision=fp16 is not supported on CPU; running bf16 instead"),
        ("fp16", False, "fp32", "precision=fp16 is not supported on CPU; running fp32 instead"),
    ],
)
def test_resolve_precision_on_cpu(requested, native, effective, warning, monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: native)
    got, message = resolve_precision(requested, CPU)
    assert got == effective
    if warning is None:
        assert message is None
    else:
        assert warning in message and "\n" not in message


# ============================================================================ MixedPrecisionTrainer


def test_fp16_step_order_scale_backward_unscale_clip_step_update(monkeypatch):
    from emotrain.training import MixedPrecisionTrainer

    mp = MixedPrecisionTrainer(CPU, "fp16")
    assert mp.scaler.is_enabled()
    scale = mp.scaler.get_scale()
    calls: list[str] = []
    for name in ("unscale_", "step", "update"):
        original = getattr(mp.scaler, name)
        monkeypatch.setattr(mp.scaler, name, lambda *a, _n=name, _f=original, **k: (calls.append(_n), _f(*a, **k))[1])
    clip = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: (calls.append("clip"), clip(*a, **k))[1])

    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    loss = (w * torch.tensor([3.0, 4.0])).sum()  # gradient (3, 4), norm 5
    mp.scale_loss(loss).backward()
    assert w.grad.tolist() == [3.0 * scale, 4.0 * scale]  # scaled before backward
    grad_norm = mp.step(opt, [w], max_grad_norm=1.0)
    assert float(grad_norm) == pytest.approx(5.0)  # unscaled before clipping
    assert mp.update() is False
    assert calls == ["unscale_", "clip", "step", "update"]
    # The step used the unscaled gradient clipped to norm 1: (3, 4) / 5.
    assert w.detach().tolist() == pytest.approx([1.0 - 0.1 * 0.6, -2.0 - 0.1 * 0.8])
    assert mp.skipped_steps == 0


def test_fp16_scaler_skips_and_counts_steps_with_inf_grads():
    from emotrain.training import MixedPrecisionTrainer

    mp = MixedPrecisionTrainer(CPU, "fp16")
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = torch.optim.SGD([w], lr=0.1)
    scale = mp.scaler.get_scale()
    for bad in (True, False, True):
        opt.zero_grad()
        mp.scale_loss((w * torch.tensor([math.inf if bad else 1.0, 1.0])).sum()).backward()
        before = w.detach().clone()
        mp.step(opt, [w], max_grad_norm=1.0)
        skipped = mp.update()
        assert skipped is bad
        assert torch.equal(w.detach(), before) is bad  # a skipped step leaves the weights alone
    assert mp.skipped_steps == 2
    assert mp.scaler.get_scale() == scale / 4  # halved at each skip
    restored = MixedPrecisionTrainer(CPU, "fp16")
    restored.load_state_dict(mp.state_dict())
    assert restored.skipped_steps == 2 and restored.scaler.get_scale() == scale / 4


@pytest.mark.parametrize("prec,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_dtype_and_scaler_per_precision(prec, dtype):
    from emotrain.training import MixedPrecisionTrainer

    mp = MixedPrecisionTrainer(CPU, prec)
    lin = torch.nn.Linear(4, 2)
    with mp.autocast():
        out = lin(torch.randn(3, 4))
    assert out.dtype == dtype
    assert mp.scaler.is_enabled() == (prec == "fp16")  # bf16 has fp32's exponent range: no scaling
    loss = out.float().sum()
    assert (mp.scale_loss(loss) is loss) == (prec != "fp16")


# ============================================================================ real trainings


@pytest.mark.skipif(not NATIVE_BF16, reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
def test_bf16_on_cpu_trains_with_finite_loss(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="emotrain")
    r = make_recipe(["precision=bf16", "trainer.epochs=2", "data.max_train_examples=64", "optim.lr=1e-3"], tmp_path)
    dtypes = record_head_dtypes(r.model)
    r.train()
    metrics = r.save()
    assert dtypes and set(dtypes) == {torch.bfloat16}  # the forward really ran under bf16 autocast
    assert r.state.global_step == 8
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val"]["loss"]) for h in r.state.history)
    assert math.isfinite(metrics["test"]["loss"])
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["precision"] == {"requested": "bf16", "effective": "bf16", "skipped_steps": 0}
    assert any(rec.getMessage() == "device=cpu precision=bf16 (requested bf16)" for rec in caplog.records)


@pytest.mark.parametrize("native,effective", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_picks_bf16_only_where_native(native, effective, tmp_path, monkeypatch):
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: native)
    r = make_recipe(["precision=auto", "trainer.max_steps=1", "data.max_train_examples=16"], tmp_path)
    assert r.mp.precision == effective
    dtypes = record_head_dtypes(r.model)
    r.train()
    assert dtypes[0] == (torch.bfloat16 if native else torch.float32)


def test_auto_bf16_falls_back_to_fp32_when_the_loss_is_not_finite(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="emotrain")
    monkeypatch.setattr(precision_mod, "cpu_supports_bf16", lambda: True)
    r = make_recipe(["precision=auto", "trainer.epochs=2", "data.max_train_examples=32"], tmp_path)
    assert r.mp.precision == "bf16"
    forward = r.criterion.forward
    calls = {"n": 0}

    def nan_once(logits, targets):
        total, parts = forward(logits, targets)
        calls["n"] += 1
        return (total * float("nan"), parts) if calls["n"] == 1 else (total, parts)

    r.criterion.forward = nan_once
    dtypes = record_head_dtypes(r.model)
    r.train()
    metrics = r.save()
    assert r.mp.precision == "fp32"
    assert dtypes[0] == torch.bfloat16 and set(dtypes[1:]) == {torch.float32}
    assert r.state.global_step == 3  # 4 batches, the non-finite one skipped
    assert all(math.isfinite(h["train_loss"]) for h in r.state.history)
    assert metrics["precision"]["requested"] == "auto" and metrics["precision"]["effective"] == "fp32"
    assert any(
        "precision=auto falls back to fp32" in rec.getMessage()
        for rec in caplog.records
        if rec.levelno == logging.WARNING
    )


# A skipped first optimiser step makes torch warn that the scheduler stepped before the optimiser.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before `optimizer.step\\(\\)`")
@pytest.mark.parametrize("inject_inf", [True, False])
def test_steps_skipped_by_the_scaler_are_counted_and_reported(inject_inf, tmp_path, monkeypatch):
    """fp16 with a GradScaler (what CUDA runs), driven through the real loop on the CPU."""
    import emotrain.recipe

    monkeypatch.setattr(emotrain.recipe, "resolve_precision", lambda requested, device: ("fp16", None))
    r = make_recipe(
        [
            "precision=fp16",
            "trainer.max_steps=1",
            "scheduler=constant",
            "scheduler.warmup_steps=0",
            "data.max_train_examples=16",
        ],
        tmp_path,
    )
    assert r.mp.scaler.is_enabled()
    scale = r.mp.scaler.get_scale()
    if inject_inf:
        r.model.heads["emotion"].weight.register_hook(lambda g: g * math.inf)
    before = {n: p.detach().clone() for n, p in r.model.named_parameters()}
    r.train()
    metrics = r.save()
    changed = [n for n, p in r.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert on_disk["precision"]["effective"] == "fp16"
    if inject_inf:
        assert changed == []  # the one step was skipped: no update, no weight decay
        assert metrics["precision"]["skipped_steps"] == on_disk["precision"]["skipped_steps"] == 1
        assert r.mp.scaler.get_scale() == scale / 2
    else:
        assert len(changed) == len(before)
        assert on_disk["precision"]["skipped_steps"] == 0


def _run_cli(args: list[str], tmp_path, timeout: int):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain", *args, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=subprocess_env(tmp_path / "cache"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return proc, run_dir


def test_fp16_on_cpu_prints_the_fallback_and_records_effective_precision(tmp_path):
    expected = "bf16" if NATIVE_BF16 else "fp32"
    proc, run_dir = _run_cli(
        [
            "backbone=tiny",
            "precision=fp16",
            "trainer.epochs=1",
            "trainer.progress=false",
            "data.max_train_examples=64",
            "data.max_eval_examples=32",
        ],
        tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    fallback = [line for line in proc.stdout.splitlines() if "precision=fp16" in line and "WARNING" in line]
    assert len(fallback) == 1, proc.stdout[-3000:]
    assert fallback[0].endswith(f"precision=fp16 is not supported on CPU; running {expected} instead")
    assert (
        f"device: cpu, precision {expected} (requested fp16)" in proc.stdout
    )  # the banner names the effective precision
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["precision"] == {"requested": "fp16", "effective": expected, "skipped_steps": 0}
    assert metrics["device"] == "cpu"


def test_design_card_example_runs_as_written(tmp_path):
    """`python -m emotrain loss=focal precision=fp16`: default MiniLM backbone, sample data (one epoch)."""
    proc, run_dir = _run_cli(["loss=focal", "precision=fp16", "trainer.epochs=1"], tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "running bf16 instead" in proc.stdout or "running fp32 instead" in proc.stdout
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["config"]["loss"]["kind"] == "focal"
    assert metrics["config"]["backbone"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert metrics["precision"]["requested"] == "fp16" and metrics["precision"]["effective"] in ("bf16", "fp32")
    assert metrics["epochs_run"] == 1 and math.isfinite(metrics["test"]["loss"])
