"""MLflow tracker (`logger=mlflow`; needs the optional extra: pip install -e '.[mlflow]').

One MLflow run per training run, written through `MlflowClient` (no fluent API, so no
process-global "active run" leaks between the jobs of an in-process Hydra multirun):

- params: the resolved config flattened to dotted keys (`optim.lr`), values as strings,
  cut to MLflow's length limit, sent with `log_batch` (100 per call);
- metrics: what the recipe passes (`train_loss`, `val/loss`, `val/emotion/macro_f1`,
  `task_weight/<task>`, `test/...`) at the optimiser step; None / NaN / inf are skipped;
- artifacts: `metrics.json`, `report/`, `.hydra/` and Hydra's job log; never the
  checkpoints or the exported model (too big);
- the run ends FINISHED, or FAILED / KILLED when training raised (`close(status)`).

Default store: the SQLite file of conf/logger/mlflow.yaml, artifacts in `mlartifacts/`
beside it. A store that cannot be opened is a ConfigError before training starts; a
logging call that fails later only warns, so a flaky tracking server never costs a run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

# Must be set before mlflow is imported anywhere (our code never reports usage data).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from emotrain.config import flatten_dict  # noqa: E402
from emotrain.errors import ConfigError  # noqa: E402

log = logging.getLogger(__name__)

INSTALL_HINT = "logger=mlflow needs the mlflow extra: pip install -e '.[mlflow]'"

# What log_artifacts uploads from the run directory (relative paths; files or folders).
ARTIFACTS = ("metrics.json", "report", ".hydra")
MAX_KEY_LENGTH = 250
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- ]")  # MLflow's allowed set, less ':' (refused on Windows)


def _import_mlflow():
    try:
        import mlflow  # noqa: F401
        from mlflow import MlflowClient
    except ImportError as e:
        raise ConfigError(INSTALL_HINT) from e
    return MlflowClient


def _max_param_length() -> int:
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        return int(MAX_PARAM_VAL_LENGTH)
    except (ImportError, AttributeError, TypeError, ValueError):
        return 500  # MLflow < 2.x limit: safe everywhere


# --------------------------------------------------------------------------- helpers


def clean_key(key: str) -> str:
    """A metric / param name MLflow accepts: bad characters -> '_', no empty or '..' segments."""
    key = _BAD_KEY_CHARS.sub("_", str(key))
    parts = [p if p not in ("", ".", "..") else "_" for p in key.strip("/").split("/")]
    return "/".join(parts)[:MAX_KEY_LENGTH] or "_"


def _stringify(value) -> str:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, default=str)
    return str(value)


def flatten_params(config: dict, max_length: int = 500, prefix: str = "") -> dict[str, str]:
    """Nested config -> {"optim.lr": "0.0001", ...}; empty dicts kept as "{}", long values cut."""
    out: dict[str, str] = {}
    for key, v in flatten_dict(config, prefix.rstrip(".")).items():
        text = _stringify(v)
        if key == "logger.tracking_uri":
            text = redact_uri(text)
        if len(text) > max_length:
            text = text[: max_length - 3] + "..."
        out[clean_key(key)] = text
    return out


def metric_items(metrics: dict) -> list[tuple[str, float]]:
    """(clean key, float) pairs; None, NaN, inf and non-numbers are skipped."""
    items = []
    for k, v in metrics.items():
        if v is None or isinstance(v, (str, bytes, dict, list, tuple)):
            continue
        try:
            value = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(value):
            items.append((clean_key(k), value))
    return items


def redact_uri(uri: str) -> str:
    """Drop a password from user:password@host URIs (the URI is logged as a param)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a local `sqlite:///path` URI (relative to the cwd; 4 slashes: absolute)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _chunks(items: list, n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]


# --------------------------------------------------------------------------- tracker


class MLflowTracker:
    """Same interface as tracking.NullTracker."""

    def __init__(self, logger_cfg, run_name: str, output_dir: Path):
        MlflowClient = _import_mlflow()
        import mlflow

        self._closed = False
        self._warned = False
        self.log_artifacts_enabled = bool(logger_cfg.log_artifacts)
        uri = logger_cfg.tracking_uri or mlflow.get_tracking_uri()  # mlflow's own default (MLFLOW_TRACKING_URI, ...)
        db = sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        shown = redact_uri(uri)
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment_id = self._experiment_id(logger_cfg.experiment, db)
            tags = {"emotrain.output_dir": str(Path(output_dir).resolve()), "mlflow.source.name": "emotrain"}
            run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        except ImportError as e:  # e.g. sqlalchemy / alembic missing for a sqlite store
            raise ConfigError(
                f"logger.tracking_uri={shown} needs the '{e.name}' package: pip install -e '.[mlflow]'"
            ) from e
        except Exception as e:  # noqa: BLE001 - any store error is a config problem at this point
            first = (str(getattr(e, "message", e)).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"logger.tracking_uri={shown}: cannot open the MLflow tracking store ({first})") from e
        self.run_id = run.info.run_id
        self.tracking_uri = uri
        self.max_param_length = _max_param_length()
        log.info("mlflow: run %s (%s) in experiment %r at %s", self.run_id, run_name, logger_cfg.experiment, shown)

    def _experiment_id(self, name: str, db: Path | None) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        # A local SQLite store keeps artifacts beside the database (mlflow would use ./mlruns of the cwd).
        location = (db.resolve().parent / "mlartifacts" / name).as_uri() if db is not None else None
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # noqa: BLE001 - another job of a parallel sweep created it first
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def _safe(self, what: str, fn, *args, **kwargs) -> None:
        """Tracking must never cost a training run: warn (once in full) and go on."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not self._warned:
                log.warning("mlflow: %s failed, continuing without it: %s", what, e)
                self._warned = True
            else:
                log.debug("mlflow: %s failed: %s", what, e)

    # ------------------------------------------------------------------ interface
    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params, self.max_param_length)
        for batch in _chunks([Param(k, v) for k, v in flat.items()], 100):
            self._safe("log_params", self.client.log_batch, self.run_id, params=batch)

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, v, now, int(step)) for k, v in metric_items(metrics)]
        for batch in _chunks(entries, 1000):
            self._safe("log_metrics", self.client.log_batch, self.run_id, metrics=batch)

    def log_artifacts(self, directory: Path) -> None:
        if not self.log_artifacts_enabled:
            return
        directory = Path(directory)
        for name in ARTIFACTS:
            path = directory / name
            if path.is_dir():
                self._safe(
                    f"log_artifacts({name})", self.client.log_artifacts, self.run_id, str(path), artifact_path=name
                )
            elif path.is_file():
                self._safe(f"log_artifact({name})", self.client.log_artifact, self.run_id, str(path))
        for path in sorted(directory.glob("*.log")):  # Hydra's job log
            self._safe(f"log_artifact({path.name})", self.client.log_artifact, self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        if self._closed:
            return
        self._closed = True
        self._safe("set_terminated", self.client.set_terminated, self.run_id, status)
