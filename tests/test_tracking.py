"""Experiment tracking: logger=none (default) and logger=mlflow (optional extra).

The helpers and the missing-extra error run everywhere; the real-training tests need
mlflow-skinny (pip install -e '.[mlflow]') and skip cleanly without it.
"""

from __future__ import annotations

import importlib
import json
import math
import sys

import pytest

from conftest import TINY, compose, train

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy 2.1 warns inside mlflow's store


# --------------------------------------------------------------------------- no mlflow needed


def test_default_logger_is_none(tmp_path):
    from emotrain.tracking import NullTracker, make_tracker

    cfg = compose(TINY, tmp_path)
    assert cfg.logger.kind == "none"
    assert isinstance(make_tracker(cfg.logger, "run", tmp_path), NullTracker)


def test_mlflow_config_defaults_to_a_local_sqlite_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = compose([*TINY, "logger=mlflow"], tmp_path)
    assert cfg.logger.tracking_uri == f"sqlite:///{cfg.paths.root_dir}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.invalid:5000")
    assert compose([*TINY, "logger=mlflow"], tmp_path).logger.tracking_uri == "http://tracking.invalid:5000"


def test_telemetry_is_disabled_before_mlflow_is_imported(monkeypatch):
    import emotrain.tracking_mlflow as tm

    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    importlib.reload(tm)
    import os

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # a user's explicit choice is kept
    importlib.reload(tm)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"


def test_missing_extra_is_a_one_line_config_error(tmp_path, monkeypatch):
    from emotrain.errors import ConfigError
    from emotrain.tracking import make_tracker

    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` -> ImportError
    cfg = compose([*TINY, "logger=mlflow"], tmp_path)
    with pytest.raises(ConfigError) as err:
        make_tracker(cfg.logger, "run", tmp_path)
    assert str(err.value) == "logger=mlflow needs the mlflow extra: pip install -e '.[mlflow]'"


def test_flatten_params_dotted_strings_truncated():
    from emotrain.tracking_mlflow import flatten_params

    flat = flatten_params(
        {
            "optim": {"lr": 1e-4, "betas": [0.9, 0.999], "head_lr": None, "fused": False},
            "loss": {"task_weights": {}},
            "data": {"tasks": {"my task!": {"column": "label"}}},
            "note": "x" * 1000,
            "logger": {"tracking_uri": "https://bob:secret@mlflow.example:5000/path"},
        },
        max_length=500,
    )
    assert flat["optim.lr"] == "0.0001" and flat["optim.betas"] == "[0.9, 0.999]"
    assert flat["optim.head_lr"] == "None" and flat["optim.fused"] == "False"
    assert flat["loss.task_weights"] == "{}"
    assert flat["data.tasks.my task_.column"] == "label"
    assert len(flat["note"]) == 500 and flat["note"].endswith("...")
    assert flat["logger.tracking_uri"] == "https://bob:***@mlflow.example:5000/path"
    assert all(isinstance(v, str) for v in flat.values())


def test_metric_items_skip_none_nan_and_clean_names():
    from emotrain.tracking_mlflow import clean_key, metric_items

    items = dict(
        metric_items(
            {"val/emotion/macro_f1": 0.5, "val/loss": float("nan"), "x": None, "inf": math.inf, "s": "a", "n": 3}
        )
    )
    assert items == {"val/emotion/macro_f1": 0.5, "n": 3.0}
    assert clean_key("val/emo:tion//f1?") == "val/emo_tion/_/f1_"
    assert clean_key("../x") == "_/x"


def test_sqlite_path():
    from emotrain.tracking_mlflow import sqlite_path

    assert str(sqlite_path("sqlite:////tmp/a/mlflow.db")) == "/tmp/a/mlflow.db"
    assert str(sqlite_path("sqlite:///mlruns/mlflow.db")) == "mlruns/mlflow.db"
    assert sqlite_path("sqlite:///:memory:") is None and sqlite_path("http://h:5000") is None


def test_params_and_metrics_go_in_batches_within_mlflow_limits():
    from emotrain.tracking_mlflow import MLflowTracker

    class FakeClient:
        def __init__(self):
            self.batches = []

        def log_batch(self, run_id, metrics=(), params=()):
            self.batches.append((len(params), len(metrics)))

    tracker = object.__new__(MLflowTracker)  # no store: only the batching is under test
    tracker.client, tracker.run_id, tracker.max_param_length, tracker._warned = FakeClient(), "r", 500, False
    pytest.importorskip("mlflow")  # Param / Metric entities
    tracker.log_params({"group": {f"k{i}": i for i in range(250)}})
    tracker.log_metrics({f"m{i}": i for i in range(1500)}, step=3)
    assert tracker.client.batches == [(100, 0), (100, 0), (50, 0), (0, 1000), (0, 500)]


# --------------------------------------------------------------------------- real MLflow store


def _client(uri):
    mlflow = pytest.importorskip("mlflow")
    return mlflow.MlflowClient(tracking_uri=uri)


def _only_run(client, experiment="emotrain"):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_mlflow_run_records_params_metric_history_and_artifacts(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from emotrain.tracking_mlflow import flatten_params

    monkeypatch.chdir(tmp_path)  # nothing may land in the working directory (mlflow's ./mlruns default)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"  # parent folder does not exist yet
    overrides = [
        *TINY,
        "trainer.epochs=2",
        "optim.lr=1e-3",
        "logger=mlflow",
        f"logger.tracking_uri={uri}",
        "logger.run_name=tiny-2ep",
    ]
    results = train(overrides, tmp_path)

    client = _client(uri)
    run = _only_run(client)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-2ep"
    params = run.data.params
    assert params["optim.lr"] == "0.001" and params["trainer.epochs"] == "2" and params["backbone.kind"] == "tiny"
    assert params == flatten_params(results["config"], 6000)  # every key of the resolved config

    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert len(history) == 2
    for key, pick in (
        ("val/loss", lambda h: h["val"]["loss"]),
        ("val/emotion/macro_f1", lambda h: h["val"]["emotion/macro_f1"]),
        ("val/sentiment/accuracy", lambda h: h["val"]["sentiment/accuracy"]),
        ("train_loss", lambda h: h["train_loss"]),
    ):
        logged = sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        assert [m.step for m in logged] == [h["step"] for h in history], key
        assert [m.value for m in logged] == pytest.approx([pick(h) for h in history], rel=1e-12), key
    assert set(run.data.metrics) >= {
        "task_weight/emotion",
        "task_weight/sentiment",
        "test/loss",
        "test/emotion/macro_f1",
    }
    assert run.data.metrics["test/loss"] == pytest.approx(results["test"]["loss"])

    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "metrics.json" in top and "report" in top
    assert not top & {"checkpoints", "model"}
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert "report/loss_curves.png" in report
    # Artifacts sit beside the database, not in the cwd.
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()


def test_mlflow_run_is_failed_when_training_raises(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from emotrain.recipe import TrainingRecipe

    def boom(self):
        raise RuntimeError("boom")

    monkeypatch.setattr(TrainingRecipe, "train", boom)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(RuntimeError, match="boom"):
        train(
            [
                *TINY,
                "logger=mlflow",
                f"logger.tracking_uri={uri}",
                "logger.experiment=failing",
                "checkpoint.enabled=false",
            ],
            tmp_path,
        )
    run = _only_run(_client(uri), "failing")
    assert run.info.status == "FAILED"
    assert run.data.params["logger.experiment"] == "failing"


def test_unusable_store_is_a_config_error(tmp_path):
    pytest.importorskip("mlflow")
    from emotrain.errors import ConfigError
    from emotrain.tracking import make_tracker

    cfg = compose([*TINY, "logger=mlflow", "logger.tracking_uri=nosuchscheme://x"], tmp_path)
    with pytest.raises(
        ConfigError, match=r"logger.tracking_uri=nosuchscheme://x: cannot open the MLflow tracking store"
    ):
        make_tracker(cfg.logger, "run", tmp_path)
