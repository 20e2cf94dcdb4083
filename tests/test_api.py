"""The Python API (`import emotrain`): compose, train and load in-process, without a Hydra application."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import emotrain
from conftest import QUICK, REPO_ROOT, run_emotrain


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTRAIN_CACHE", str(tmp_path / "cache"))


def test_import_is_light_and_exports_the_api():
    """`import emotrain` loads no torch, transformers or Hydra: scripts and inference-only installs import it
    cheaply."""
    code = (
        "import sys, emotrain\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'hydra', 'omegaconf'})\n"
        "assert not heavy, heavy\n"
        "assert callable(emotrain.train) and callable(emotrain.load) and callable(emotrain.compose)\n"
        "assert issubclass(emotrain.ConfigError, emotrain.EmotrainError) and issubclass(emotrain.TrainingDiverged, "
        "emotrain.EmotrainError)\n"
        "print('LIGHT')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0 and "LIGHT" in proc.stdout, proc.stderr


def test_api_names_survive_importing_the_training_modules():
    """No submodule is named like an API function (importing it would replace the function on the package)."""
    import emotrain.cli  # noqa: F401
    import emotrain.recipe  # noqa: F401

    assert callable(emotrain.train) and callable(emotrain.compose) and callable(emotrain.load)


def test_compose_is_the_cli_config(tmp_path):
    """emotrain.compose gives what `python -m emotrain --cfg job` prints, paths aside."""
    overrides = [
        "loss=focal",
        "backbone=tiny",
        "trainer.epochs=2",
        "data.preprocess.lowercase=true",
        "+loss.task_weights.emotion=2",
    ]
    proc = run_emotrain(["--cfg", "job", *overrides], tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cli = OmegaConf.create(proc.stdout)
    cfg = emotrain.compose(overrides, output_dir=tmp_path / "run")
    cli_dict, api_dict = (OmegaConf.to_container(c, resolve=False) for c in (cli, cfg))
    for config in (cli_dict, api_dict):
        del config["paths"]["root_dir"], config["paths"]["output_dir"]  # the CLI's come from Hydra's run time
    assert api_dict == cli_dict
    assert cfg.loss.gamma == 2.0 and cfg.trainer.epochs == 2


def test_compose_defaults_paths_as_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = emotrain.compose(["backbone=tiny"])
    assert Path(cfg.paths.root_dir) == tmp_path.resolve()
    out = Path(cfg.paths.output_dir)
    assert out.parent.parent == tmp_path.resolve() / "outputs"  # outputs/<date>/<time>
    assert emotrain.compose(["hydra.run.dir=elsewhere/run"]).paths.output_dir == str(
        tmp_path.resolve() / "elsewhere" / "run"
    )


def test_train_returns_metrics_json_and_writes_the_run_dir(tmp_path, cache_env):
    out = tmp_path / "run"
    overrides = [*QUICK, "checkpoint=default", "trainer.progress=false"]
    results = emotrain.train(overrides, output_dir=out)
    assert results["status"] == "completed"
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(results))
    assert results["overrides"] == overrides
    assert OmegaConf.load(out / ".hydra" / "config.yaml").trainer.epochs == 1
    assert OmegaConf.to_container(OmegaConf.load(out / ".hydra" / "overrides.yaml")) == overrides
    assert "test (best epoch" in (out / "emotrain.log").read_text()
    engine = emotrain.load(out)
    prediction = engine.predict("I am so happy today")
    assert prediction["emotion"] in engine.labels["emotion"]


def test_train_with_a_users_config_dir(tmp_path, cache_env):
    conf = tmp_path / "my_conf" / "experiment"
    conf.mkdir(parents=True)
    (conf / "mine.yaml").write_text("# @package _global_\ntrainer:\n  epochs: 1\n  dropout: 0.25\n")
    results = emotrain.train(["experiment=mine", *QUICK], output_dir=tmp_path / "run", config_dir=tmp_path / "my_conf")
    assert results["config"]["trainer"]["dropout"] == 0.25
    with pytest.raises(emotrain.ConfigError, match="config_dir"):
        emotrain.compose([], config_dir=tmp_path / "missing")


@pytest.mark.parametrize(
    "overrides,error,fragment",
    [
        (["+trainer.epoch=1"], emotrain.ConfigError, "did you mean trainer.epochs?"),
        (["trainer.epoch=1"], emotrain.ConfigError, "did you mean trainer.epochs?"),
        (["trainer.epochs=abc"], emotrain.ConfigError, "trainer.epochs"),
        (["loss=nope"], emotrain.ConfigError, "default, focal"),
        (["sweep=kfold"], emotrain.ConfigError, "python -m emotrain -m"),
        (["trainer.dropout=1.5"], emotrain.ConfigError, "trainer.dropout=1.5"),
        (
            ["data=table", "data.train_file=no_such.csv", "+data.tasks.emotion.column=label"],
            emotrain.DataError,
            "no_such.csv",
        ),
    ],
)
def test_train_raises_typed_one_line_errors(overrides, error, fragment, tmp_path, cache_env):
    out = tmp_path / "run"
    with pytest.raises(error) as info:
        emotrain.train([*QUICK, *overrides], output_dir=out)
    assert fragment in str(info.value) and "\n" not in str(info.value)
    if (out / "status.json").exists():  # failures after composition leave the reason, as on the CLI
        status = json.loads((out / "status.json").read_text())
        assert status["status"] == "failed" and fragment in status["error"]
    assert not (out / "metrics.json").exists()


def test_train_inside_a_hydra_app_leaves_its_state(tmp_path, cache_env):
    """A user's own @hydra.main (or compose session) may call emotrain.train: Hydra's global state is restored."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    user_conf = tmp_path / "user_conf"
    user_conf.mkdir()
    (user_conf / "app.yaml").write_text("greeting: hello\n")
    with initialize_config_dir(config_dir=str(user_conf), version_base="1.3"):
        held = GlobalHydra.instance().hydra
        emotrain.compose(["backbone=tiny"], output_dir=tmp_path / "run")
        assert GlobalHydra.instance().hydra is held
        assert compose(config_name="app").greeting == "hello"
