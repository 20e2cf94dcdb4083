"""emotrain from Python: compose, train and load without a Hydra application.

    import emotrain

    cfg = emotrain.compose(["loss=focal", "trainer.epochs=2"])         # the CLI's config, validated
    results = emotrain.train(["loss=focal", "trainer.epochs=2"], output_dir="runs/focal")
    results["test"]["emotion/macro_f1"]                               # the dict written to metrics.json
    engine = emotrain.load("runs/focal")                              # run dir, checkpoint or ONNX bundle
    model, tokenizer, facts = emotrain.load_model("runs/focal/model")  # the torch module (encoder + heads)
    engine.predict("I love it!")["emotion"]

`train` composes the same config as ``python -m emotrain OVERRIDES`` (the packaged configs plus
``config_dir`` when given), checks it the same way and writes the same run directory
(``.hydra/``, ``emotrain.log``, ``metrics.json``, checkpoints, report, ``model/``). Errors raise
the exceptions the CLI turns into one line: :class:`~emotrain.errors.ConfigError` (a bad
override or value), :class:`~emotrain.errors.DataError`, :class:`~emotrain.errors.CheckpointError`,
:class:`~emotrain.errors.TrainingDiverged`, :class:`~emotrain.errors.TrainingInterrupted`
(all :class:`~emotrain.errors.EmotrainError`), and ``OSError`` for a run directory that cannot be
written; a failed run leaves ``status.json`` saying why, as on the command line.

This module imports nothing heavy at import time, so ``import emotrain`` stays cheap and works
in an inference-only install (where ``train`` raises MissingDependencyError).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from emotrain.errors import ConfigError, require_packages

if TYPE_CHECKING:  # pragma: no cover
    from omegaconf import DictConfig

    from emotrain.inference.engine import EmotionInferenceEngine

CONFIG_MODULE = "emotrain.conf"
LOG_FILE = "emotrain.log"
_MULTIRUN_GROUPS = ("sweep", "hparams_search")


@contextlib.contextmanager
def _own_global_hydra() -> Iterator[None]:
    """Hydra's compose API needs its global state; leave any the caller's own Hydra app holds as it was."""
    from hydra.core.global_hydra import GlobalHydra

    held = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        yield
    finally:
        GlobalHydra.instance().hydra = held


def _compose_with_hydra(overrides: list[str], config_dir: str | os.PathLike | None) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    import emotrain.config  # noqa: F401  (registers the schemas)
    from emotrain.callbacks import register_resolvers
    from emotrain.cli import hydra_error_line

    register_resolvers()
    if config_dir is not None:
        directory = Path(config_dir).expanduser().resolve()
        if not directory.is_dir():
            raise ConfigError(
                f"config_dir={config_dir}: not a directory; pass the folder that holds your own config groups"
            )
        overrides = [*overrides, f"hydra.searchpath=[file://{directory}]"]
    try:
        with _own_global_hydra(), initialize_config_module(CONFIG_MODULE, version_base="1.3"):
            return hydra_compose(config_name="train", overrides=overrides, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(hydra_error_line(e)) from None


def compose(
    overrides: Iterable[str] = (),
    *,
    output_dir: str | os.PathLike | None = None,
    root_dir: str | os.PathLike | None = None,
    config_dir: str | os.PathLike | None = None,
) -> DictConfig:
    """The config ``python -m emotrain OVERRIDES`` runs (hydra node removed), checked as the CLI checks it.

    output_dir: the run directory (default, as the CLI: ``outputs/<date>/<time>`` under root_dir).
    root_dir: where relative paths in the config resolve (default: the current directory, as the CLI).
    config_dir: a folder of your own config groups composed on top of the packaged ones (the CLI's
    ``--config-dir``), e.g. ``my_conf/experiment/mine.yaml`` for ``experiment=mine``.
    Raises ConfigError with the CLI's one-line message.
    """
    require_packages("emotrain.compose")
    from hydra.types import RunMode
    from omegaconf import OmegaConf, open_dict

    from emotrain.config import check_config_keys

    overrides = [str(o) for o in overrides]
    cfg = _compose_with_hydra(overrides, config_dir)
    hydra_cfg = cfg.hydra
    if hydra_cfg.mode == RunMode.MULTIRUN or any(
        o.split("=", 1)[0].lstrip("+~") in _MULTIRUN_GROUPS for o in overrides
    ):
        raise ConfigError(
            "emotrain.train runs one job; sweeps (sweep=..., hparams_search=...) are Hydra multiruns: run them with "
            "`python -m emotrain -m ...`, or call emotrain.train once per setting (e.g. per cv.fold)"
        )
    root = Path(root_dir if root_dir is not None else Path.cwd()).expanduser().resolve()
    if output_dir is None:
        run_dir = Path(str(hydra_cfg.run.dir))  # outputs/<date>/<time>, as the CLI (hydra.run.dir=... overrides it)
        output_dir = run_dir if run_dir.is_absolute() else root / run_dir
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.root_dir = str(root)
        cfg.paths.output_dir = str(Path(output_dir).expanduser().resolve())
    OmegaConf.set_struct(cfg, True)
    check_config_keys(cfg)
    return cfg


@contextlib.contextmanager
def _log_to(path: Path) -> Iterator[None]:
    """The run's log file, as the CLI writes it; the caller's own logging setup is left alone."""
    logger = logging.getLogger("emotrain")
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    handler.setLevel(logging.INFO)
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def train(
    overrides: Iterable[str] = (),
    *,
    output_dir: str | os.PathLike | None = None,
    root_dir: str | os.PathLike | None = None,
    config_dir: str | os.PathLike | None = None,
) -> dict:
    """Train one model as ``python -m emotrain OVERRIDES`` does; returns the dict written to metrics.json.

    Arguments as :func:`compose`. Raises EmotrainError subclasses (ConfigError, DataError,
    CheckpointError, TrainingDiverged, TrainingInterrupted) or OSError; see the module docstring.
    """
    require_packages("emotrain.recipe")
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from emotrain.cli import hydra_error_line, record_run
    from emotrain.rundir import claim_run_dir

    overrides = [str(o) for o in overrides]
    cfg = compose(overrides, output_dir=output_dir, root_dir=root_dir, config_dir=config_dir)
    out_dir = Path(cfg.paths.output_dir)
    with claim_run_dir(out_dir, resume=cfg.resume, root_dir=cfg.paths.root_dir):  # one run per directory, as the CLI
        (out_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, out_dir / ".hydra" / "config.yaml")
        OmegaConf.save(OmegaConf.create(overrides), out_dir / ".hydra" / "overrides.yaml")
        with _log_to(out_dir / LOG_FILE):
            try:
                return record_run(cfg, overrides, out_dir)
            except OmegaConfBaseException as e:  # a value that cannot be resolved (e.g. ${oc.env:UNSET})
                raise ConfigError(hydra_error_line(e)) from None


def load(path: str | os.PathLike, **kwargs) -> EmotionInferenceEngine:
    """The inference engine for a run directory, checkpoint, ``model/`` export or ONNX bundle.

    Keyword arguments as :func:`emotrain.inference.load_engine` (``quantized``, ``threshold``,
    ``num_threads``, ``model_type``). An ONNX bundle needs neither torch nor transformers.
    """
    from emotrain.inference import load_engine

    return load_engine(path, **kwargs)


def load_model(path: str | os.PathLike):
    """(model, tokenizer, facts) from a run's ``model/`` folder (or a run directory holding one): the fine-tuned
    encoder and its heads as one torch module in eval mode (``model(input_ids, attention_mask)`` -> {task: logits};
    ``model.probabilities(logits)``), its transformers tokenizer, and emotrain_model.json's facts (tasks, labels,
    thresholds, pooling, max length, preprocessing). Needs torch and transformers."""
    require_packages("emotrain.load_model")
    from emotrain.inference.model_dir import EXPORT_META, load_exported_model

    path = Path(path)
    if path.is_dir() and not (path / EXPORT_META).is_file() and (path / "model" / EXPORT_META).is_file():
        path = path / "model"
    return load_exported_model(path)
