"""Every option of every config group composes; bad overrides fail at compose time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import CONFIG_DIR, REPO_ROOT, compose

PRESET_GROUPS = {"hydra", "sweep", "hparams_search", "experiment"}  # '@package _global_' presets; composed elsewhere
GROUPS = sorted(
    p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in PRESET_GROUPS and not p.name.startswith("_")
)
REQUIRED = {  # options with mandatory keys
    ("data", "goemotions"): ["data.dir=/tmp/x"],
    ("data", "table"): ["data.train_file=x.csv", "+data.tasks.emotion.column=label"],
    ("backbone", "local"): ["backbone.path=/tmp/model"],
}
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONFIG_DIR / g).glob("*.yaml"))]


def test_root_defaults_name_every_group():
    text = (CONFIG_DIR / "train.yaml").read_text()
    for group in GROUPS + sorted(PRESET_GROUPS - {"hydra"}):
        assert f"- {group}:" in text, f"train.yaml defaults list does not name group {group}"
    for group in ("data", "backbone", "freeze", "loss", "scheduler", "precision", "cv", "optim", "trainer"):
        assert group in GROUPS


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option, tmp_path):
    from omegaconf import OmegaConf

    cfg = compose([f"{group}={option}", *REQUIRED.get((group, option), [])], tmp_path)
    node = cfg[group]
    # The YAML's schema is attached: the node is typed by a dataclass, not a plain dict.
    assert OmegaConf.get_type(node) is not dict
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize(
    "override,expected",
    [
        ("trainer.epochs=abc", (ValidationError, ConfigCompositionException)),
        ("trainer.epoch=3", (ConfigKeyError, ConfigCompositionException)),
        ("loss=nope", (ConfigCompositionException,)),
        ("precision.mode=fp8", (ValidationError, ConfigCompositionException)),
        ("backbone.pooling=max", (ValidationError, ConfigCompositionException)),
        ("freeze.layers=two", (ValidationError, ConfigCompositionException)),
    ],
)
def test_bad_overrides_fail_at_compose(override, expected, tmp_path):
    with pytest.raises(expected):
        compose([override], tmp_path)


def test_cli_rejects_bad_override_with_one_line_message(tmp_path):
    """Compose errors stop the CLI before any data is read: message names the key, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain", "trainer.epochs=abc", f"hydra.run.dir={tmp_path}/run"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "trainer.epochs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_help_lists_config_groups():
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for line in (
        "backbone: hf, local, minilm, tiny",
        "data: goemotions, sample, table",
        "loss: default, focal",
        "cv: holdout, kfold",
    ):
        assert line in proc.stdout


@pytest.mark.parametrize("experiment,epochs", [("goemotions", 5), ("goemotions_fast", 2)])
def test_goemotions_experiments_compose(experiment, epochs, tmp_path):
    cfg = compose([f"experiment={experiment}", "data.dir=/tmp/goemotions"], tmp_path)
    assert cfg.data.kind == "goemotions" and cfg.backbone.kind == "minilm"
    assert cfg.trainer.monitor == "emotion/macro_f1" and cfg.trainer.monitor_mode.value == "max"
    assert cfg.trainer.epochs == epochs and cfg.loss.label_reduction.value == "sum"
    from emotrain.recipe import validate_config

    validate_config(cfg)


# --------------------------------------------------------------------------- strict keys


@pytest.mark.parametrize(
    "override,message",
    [
        ("+trainer.epoch=1", "trainer.epoch: no such key; did you mean trainer.epochs?"),
        ("+optim.lrr=1", "optim.lrr: no such key; did you mean optim.lr?"),
        ("+seedd=3", "seedd: no such key; did you mean seed?"),
        ("+trainer.early_stopping.patiense=3", "did you mean trainer.early_stopping.patience?"),
        (
            "+backbone.hidden_size=768",
            "backbone.hidden_size: the chosen backbone option has no such key; it acts only with backbone=tiny",
        ),
        ("+freeze.every=2", "it acts only with freeze=progressive"),
        ("+cv.k=3", "it acts only with cv=kfold"),
        ("+logger.tracking_uri=x", "it acts only with logger=mlflow"),
        ("+scheduler.num_cycles=3", "it acts only with scheduler=cosine_restarts"),
        (
            "loss.kind=focal",
            "loss.kind=focal: the composed loss option has other keys; choose the option itself with loss=focal",
        ),
    ],
)
def test_keys_outside_the_schema_are_refused_with_the_closest_key(override, message, tmp_path):
    from emotrain.config import check_config_keys
    from emotrain.errors import ConfigError

    cfg = compose([override], tmp_path)  # `+key` gets past Hydra's own check
    with pytest.raises(ConfigError) as e:
        check_config_keys(cfg)
    assert message in str(e.value)


def test_open_maps_take_new_keys(tmp_path):
    from emotrain.config import check_config_keys

    cfg = compose(
        [
            "data=table",
            "data.train_file=x.csv",
            "+data.tasks.emotion.column=label",
            "+data.tasks.topic.column=t",
            "+loss.task_weights.emotion=2.0",
            "loss=focal",
            "+loss.alpha.emotion=[1,2]",
        ],
        tmp_path,
    )
    check_config_keys(cfg)
    assert set(cfg.data.tasks) == {"emotion", "topic"}


@pytest.mark.parametrize(
    "group,option,own,foreign",
    [
        ("backbone", "minilm", [], ["hidden_size", "num_layers", "path"]),
        ("backbone", "tiny", ["hidden_size", "num_layers", "num_heads", "intermediate_size"], ["path"]),
        ("backbone", "local", ["path"], ["hidden_size"]),
        ("freeze", "none", [], ["layers", "every", "feature_cache"]),
        ("freeze", "partial", ["layers"], ["every", "feature_cache"]),
        ("freeze", "full", ["feature_cache"], ["layers", "every"]),
        ("loss", "default", [], ["gamma", "alpha"]),
        ("loss", "focal", ["gamma", "alpha"], []),
        ("cv", "holdout", [], ["k", "fold", "seed", "stratified", "include_val"]),
        ("logger", "none", [], ["tracking_uri", "experiment", "run_name"]),
        ("scheduler", "cosine", [], ["num_cycles"]),
    ],
)
def test_an_option_shows_only_the_keys_that_act_on_it(group, option, own, foreign, tmp_path):
    """--cfg job (the composed config) lists an option's own keys and none of its siblings'."""
    cfg = compose([f"{group}={option}", *REQUIRED.get((group, option), [])], tmp_path)
    keys = set(cfg[group])
    assert set(own) <= keys and not set(foreign) & keys, keys


def test_cli_one_line_key_errors(tmp_path):
    """Hydra's own '+key' hint after a typo is replaced by the closest valid key; lexer errors show the quoting."""
    cases = {
        "trainer.epoch=3": "emotrain: error: trainer.epoch: no such key; did you mean trainer.epochs?",
        "backbone.hidden_size=768": "acts only with backbone=tiny",
        "data.sep=;": "quote the value: \"data.sep=';'\"",
    }
    for override, fragment in cases.items():
        proc = subprocess.run(
            [sys.executable, "-m", "emotrain", override, f"hydra.run.dir={tmp_path}/run"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "+trainer.epoch" not in proc.stderr


def test_configs_ship_inside_the_package_and_work_from_any_directory(tmp_path):
    """`--help` and `--cfg job` from a directory that is not the checkout: Hydra reads pkg://emotrain.conf."""
    import emotrain

    conf = Path(emotrain.__file__).parent / "conf"
    assert CONFIG_DIR == conf and (conf / "train.yaml").is_file() and not (REPO_ROOT / "conf").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "emotrain", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and "backbone: hf, local, minilm, tiny" in proc.stdout, proc.stderr
    user = tmp_path / "my_conf" / "experiment"
    user.mkdir(parents=True)
    (user / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /backbone: tiny\ntrainer:\n  epochs: 3\n"
    )
    for how in (["--config-dir", str(tmp_path / "my_conf")], [f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"]):
        proc = subprocess.run(
            [sys.executable, "-m", "emotrain", *how, "experiment=mine", "--cfg", "job"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert "kind: tiny" in proc.stdout and "epochs: 3" in proc.stdout
