"""The result of one run: `metrics.json`, defined once.

Training writes a `RunResult`; reports, `emotrain-summarize` and inference read it through
`RunResult.read` / `from_dict`. The file carries `format` and `format_version`; files written
before the format was versioned (no `format` key) read as version 1. Every key is documented on
its field; metrics keys are flat (`loss`, `macro_f1`, `emotion/macro_f1`, `emotion/macro_f1_tuned`,
...; see emotrain.training.metrics). Torch-free: the inference side reads it too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from emotrain.errors import EmotrainError
from emotrain.utils import one_line

RESULT_FORMAT = "emotrain-run-result"
RESULT_VERSION = 1
METRICS_FILE = "metrics.json"
STATUS_FILE = "status.json"

# JSON keys that are not Python names.
_KEY_OF_FIELD = {"test_at_05": "test_at_0.5"}
_FIELD_OF_KEY = {v: k for k, v in _KEY_OF_FIELD.items()}


@dataclass
class RunResult:
    status: str  # completed | diverged
    objective: dict  # {metric, mode, split: "val", value}: the best trainer.monitor value (what sweeps optimise)
    best: dict  # {epoch, step, metric, mode, value, split}: the kept evaluation; every report names this one
    best_epoch: int | None
    epochs_run: int
    global_steps: int
    stopped_early: bool
    best_val: dict  # validation metrics of the kept evaluation
    final_val: dict  # validation metrics of the last evaluation
    test: dict  # test metrics of the kept model, multi-label tasks decided as `decisions` says
    test_at_05: dict  # the same probabilities with every label at 0.5 (empty without a multi-label task)
    test_per_class: dict  # {task: {label: {precision, recall, f1, support}}}
    thresholds: dict  # {task: per-label thresholds} of multi-label tasks
    decisions: dict  # {policy: tuned | fixed | 0.5, description, applies_to: [multi-label tasks]}
    history: (
        list  # one entry per evaluation: epoch, epoch_done, step, train_loss, val, lr, trainable_params, task_weights
    )
    lr_per_step: list  # [step, lr of the first parameter group]
    wall_time_s: float
    train_samples_per_s: float  # training throughput, evaluation excluded
    device: str
    precision: dict  # {requested, effective, skipped_steps}
    seed: int
    deterministic: bool
    overrides: list
    resumed_from: str | None
    tasks: list  # [{name, labels, multilabel}]
    primary_task: str | None
    data_sizes: dict  # {train, val, test}
    effective_batch_size: int  # examples per optimiser step (batch_size x grad_accum_steps x processes)
    world_size: int  # data-parallel processes
    reproducibility: dict
    git: dict
    versions: dict
    config: dict  # the resolved config
    error: str | None = None  # why a diverged run stopped
    model_dir: str | None = None  # the slim export of the kept model
    format: str = RESULT_FORMAT
    format_version: int = RESULT_VERSION
    extra: dict = field(default_factory=dict)  # keys of a newer format this version does not know, kept as they are

    def to_dict(self) -> dict:
        """The metrics.json layout (optional keys only when set)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name == "extra" or (f.name in ("error", "model_dir") and getattr(self, f.name) is None):
                continue
            out[_KEY_OF_FIELD.get(f.name, f.name)] = getattr(self, f.name)
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> RunResult:
        """A metrics.json dict (any version this code knows: 1, or older files without `format`)."""
        if data.get("format", RESULT_FORMAT) != RESULT_FORMAT:
            raise EmotrainError(f"not an emotrain run result (format {data.get('format')!r})")
        if int(data.get("format_version", 1)) > RESULT_VERSION:
            raise EmotrainError(
                f"run result format version {data['format_version']} is newer than this emotrain reads "
                f"({RESULT_VERSION}); upgrade emotrain"
            )
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        values, extra = {}, {}
        for key, value in data.items():
            name = _FIELD_OF_KEY.get(key, key)
            (values if name in names else extra)[name if name in names else key] = value
        defaults = {
            f.name: None
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        for key in (
            "best_val",
            "final_val",
            "test",
            "test_at_05",
            "test_per_class",
            "thresholds",
            "decisions",
            "precision",
            "data_sizes",
            "reproducibility",
            "git",
            "versions",
            "config",
            "objective",
            "best",
        ):
            defaults[key] = {}
        for key in ("history", "lr_per_step", "overrides", "tasks"):
            defaults[key] = []
        return cls(**{**defaults, **values}, extra=extra)

    @classmethod
    def read(cls, path: str | Path) -> RunResult:
        """metrics.json (or a run directory holding one); EmotrainError naming the file when it cannot be used."""
        path = Path(path)
        if path.is_dir():
            path = path / METRICS_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EmotrainError(f"{path}: unreadable run result ({one_line(e, 120)})") from None
        if not isinstance(data, dict):
            raise EmotrainError(f"{path}: not a run result (a JSON object was expected)")
        try:
            return cls.from_dict(data)
        except EmotrainError as e:
            raise EmotrainError(f"{path}: {e}") from None

    def write(self, run_dir: str | Path) -> Path:
        from emotrain.io import write_json

        return write_json(Path(run_dir) / METRICS_FILE, self.to_dict())

    # -- what readers ask of a result
    @property
    def completed(self) -> bool:
        return self.status == "completed"

    def multilabel_tasks(self) -> list[str]:
        return [t["name"] for t in self.tasks if t.get("multilabel")]
