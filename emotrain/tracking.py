"""Experiment tracking backends. Reads conf/logger/.

`logger=none` (default) records nothing beyond the run directory; `logger=mlflow`
sends params, per-epoch metrics and artifacts to MLflow (optional extra).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class NullTracker:
    """The interface every tracker implements; does nothing."""

    def log_params(self, params: dict) -> None: ...

    def log_metrics(self, metrics: dict, step: int) -> None: ...

    def log_artifacts(self, directory: Path) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


def make_tracker(logger_cfg, run_name: str, output_dir: Path):
    kind = logger_cfg.kind
    if kind == "none":
        return NullTracker()
    if kind == "mlflow":
        from emotrain.tracking_mlflow import MLflowTracker

        return MLflowTracker(logger_cfg, run_name, output_dir)
    from emotrain.errors import ConfigError

    raise ConfigError(f"logger.kind={kind}: unknown; use none or mlflow")
