"""The shared plumbing of the redesign: RunResult (metrics.json defined once), DataParallel's single-process no-ops,
explicit model facts in checkpoints, and the small helpers every module uses."""

from __future__ import annotations

import enum
import errno
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import QUICK, train
from emotrain.errors import EmotrainError
from emotrain.results import RESULT_FORMAT, RESULT_VERSION, RunResult
from emotrain.utils import best_index, is_better, json_safe, one_line, os_error_advice


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    work = tmp_path_factory.mktemp("result")
    results = train(quick("checkpoint=default"), work)
    return Path(results["config"]["paths"]["output_dir"]), results


def quick(*extra):
    return [*QUICK, *extra]


def test_metrics_json_round_trips_through_run_result(finished):
    run, results = finished
    data = json.loads((run / "metrics.json").read_text())
    assert data["format"] == RESULT_FORMAT and data["format_version"] == RESULT_VERSION
    result = RunResult.read(run)
    assert result.to_dict() == data  # every key, the optional ones (model_dir) included
    assert result.completed and result.test_at_05 == data["test_at_0.5"] and result.best["epoch"] == data["best_epoch"]


def test_older_and_newer_results(finished, tmp_path):
    run, _ = finished
    data = json.loads((run / "metrics.json").read_text())
    old = {k: v for k, v in data.items() if k not in ("format", "format_version", "best", "decisions")}
    old["a_key_from_elsewhere"] = 1
    result = RunResult.from_dict(old)  # written before the format was versioned: reads as version 1
    assert result.best == {} and result.extra == {"a_key_from_elsewhere": 1}
    assert result.to_dict()["a_key_from_elsewhere"] == 1  # kept as it was
    newer = tmp_path / "metrics.json"
    newer.write_text(json.dumps({**data, "format_version": RESULT_VERSION + 1}))
    with pytest.raises(EmotrainError, match="newer than this emotrain reads"):
        RunResult.read(newer)
    newer.write_text("{not json")
    with pytest.raises(EmotrainError, match="unreadable run result"):
        RunResult.read(newer)


def test_checkpoints_carry_the_model_facts_and_old_ones_still_export(finished, tmp_path):
    from emotrain.checkpointing import load_checkpoint, resolve_checkpoint
    from emotrain.inference.model_dir import export_model, load_exported_model, model_facts

    run, results = finished
    ckpt_path = resolve_checkpoint(run, "best")
    ckpt = load_checkpoint(ckpt_path)
    info = ckpt["model_info"]
    assert info["max_length"] == results["config"]["backbone"]["max_length"] and info["primary_task"] == "emotion"
    assert info["preprocess"] == results["config"]["data"]["preprocess"] and Path(info["tokenizer_dir"]).is_dir()
    # A checkpoint written before model_info held these facts: the same ones, read from its saved config.
    legacy = dict(
        ckpt, model_info={k: v for k, v in info.items() if k in ("class", "encoder_class", "pooling", "dropout")}
    )
    assert model_facts(legacy) == model_facts(ckpt)
    torch.save(legacy, tmp_path / "legacy.pt")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(info["tokenizer_dir"])
    _, _, meta = load_exported_model(export_model(tmp_path / "legacy.pt", tmp_path / "model", tokenizer))
    assert meta["max_length"] == info["max_length"] and meta["preprocess"] == info["preprocess"]


def test_data_parallel_is_a_no_op_in_one_process():
    from emotrain.distributed import DataParallel, DistInfo

    dp = DataParallel(DistInfo())
    model = torch.nn.Linear(2, 2)
    assert dp.wrap(model) is model and dp.is_main and dp.world_size == 1
    loss = torch.tensor(2.5)
    assert dp.share_of_batch(loss, 3, 7) is loss  # no reweighting: the single-process objective, bit for bit
    with dp.no_sync(model, sync=False):
        pass
    assert dp.any(True) and not dp.any(False)
    assert dp.sum(torch.tensor(4.0), 3) == (4.0, 3)
    total, seen = dp.running_sums(1.5, 2, torch.device("cpu"))
    assert float(total) == 1.5 and seen == 2
    state = torch.get_rng_state()
    dp.seed_epoch(1, 2)
    assert torch.equal(state, torch.get_rng_state())  # no reseeding in one process


def test_shared_helpers():
    assert one_line("a\n  b\tc") == "a b c" and one_line("x" * 50, limit=10) == "xxxxxxx..."
    assert "free disk space" in os_error_advice(errno.ENOSPC) and "permissions" in os_error_advice(errno.EACCES)
    assert "a file, not a directory" in os_error_advice(errno.ENOTDIR, where="paths.cache_dir")

    class Mode(enum.Enum):
        MAX = "max"

    data = {"a": np.float32(1.5), "b": [np.int64(2), float("nan")], "c": Mode.MAX, "d": Path("/x"), 3: (1, 2)}
    assert json_safe(data) == {"a": 1.5, "b": [2, None], "c": "max", "d": "/x", "3": [1, 2]}
    json.dumps(json_safe({"t": torch.tensor([1.0, math.inf])}), allow_nan=False)
    assert is_better(0.5, None, "min") and is_better(0.4, 0.5, "min") and not is_better(0.45, 0.5, "min", min_delta=0.1)
    assert is_better(0.6, 0.5, "max") and not is_better(0.5, 0.5, "max")
    assert best_index([0.3, None, 0.1, 0.1, float("nan")], "min") == 2 and best_index([0.3, 0.7, 0.7], "max") == 1
    assert best_index([None, float("nan")], "min") is None
