"""Every option of every config group composes; bad overrides fail at compose time."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from conftest import CONFIG_DIR, REPO_ROOT, compose

PRESET_GROUPS = {"hydra", "sweep", "hparams_search", "experiment"}  # '@package _global_' presets; composed elsewhere
GROUPS = sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in PRESET_GROUPS)
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
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert "trainer.epochs" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_help_lists_config_groups():
    proc = subprocess.run([sys.executable, "-m", "emotrain", "--help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for line in ("backbone: local, minilm, tiny", "data: goemotions, sample, table", "loss: default, focal", "cv: holdout, kfold"):
        assert line in proc.stdout


def test_goemotions_experiment_composes(tmp_path):
    cfg = compose(["experiment=goemotions", "data.dir=/tmp/goemotions"], tmp_path)
    assert cfg.data.kind == "goemotions" and cfg.backbone.kind == "minilm"
    assert cfg.trainer.monitor == "emotion/macro_f1" and cfg.trainer.monitor_mode.value == "max"
