"""Checkpoint retention during training: keep the best `save_top_k` by the monitored metric plus the last.

Reads conf/checkpoint (with emotrain.checkpointing, which owns the file format). Pointers
(best.json, last.json, index.json) are written before old files are deleted, so a crash in
between leaves extra files, never a dangling pointer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from emotrain.checkpointing import CHECKPOINT_DIR, _save, _write_error
from emotrain.config import choice
from emotrain.errors import CheckpointError
from emotrain.io import finite_or_none, write_json
from emotrain.utils import json_safe

log = logging.getLogger("emotrain.checkpointing")


class CheckpointManager:
    """Saves checkpoints under `output_dir/checkpoints/`, keeps the `save_top_k` best by `monitor` plus the last.

    save_top_k: 0 keeps only the last, -1 keeps all. Maintains best.json / last.json pointers and index.json;
    a new manager on the same directory picks up the kept checkpoints from index.json (resume).
    """

    def __init__(
        self, output_dir, prefix: str = "emotrain", save_top_k: int = 1, monitor: str = "loss", mode: str = "min"
    ):
        mode = choice(mode)
        if mode not in ("min", "max"):
            raise CheckpointError(f"mode={mode!r}: use 'min' or 'max'")
        if save_top_k < -1:
            raise CheckpointError(f"save_top_k={save_top_k}: use -1 (keep all), 0 (only last) or a positive count")
        self.output_dir = Path(output_dir)
        self.dir = self.output_dir / CHECKPOINT_DIR
        self.prefix, self.save_top_k, self.monitor, self.mode = prefix, int(save_top_k), monitor, mode
        self.records: list[
            dict
        ] = []  # {"path": name, "epoch", "global_step", "value"} of kept checkpoints, oldest first
        self._load_index()

    # -- bookkeeping
    def _load_index(self) -> None:
        index = self.dir / "index.json"
        if not index.is_file():
            return
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable %s (%s)", index, e)
            return
        if data.get("monitor") != self.monitor or data.get("mode") != self.mode:
            log.warning(
                "%s tracks %s/%s, this run %s/%s: earlier checkpoints are kept but not ranked",
                index,
                data.get("monitor"),
                data.get("mode"),
                self.monitor,
                self.mode,
            )
            return
        self.records = [r for r in data.get("checkpoints", []) if (self.dir / r["path"]).is_file()]

    def _ranked(self) -> list[dict]:
        scored = [r for r in self.records if r.get("value") is not None]
        # Stable sort: among equal values the earlier checkpoint stays ahead.
        return sorted(scored, key=lambda r: r["value"], reverse=(self.mode == "max"))

    @property
    def last(self) -> dict | None:
        return self.records[-1] if self.records else None

    @property
    def best(self) -> dict | None:
        ranked = self._ranked()
        return ranked[0] if ranked and self.save_top_k != 0 else None

    @property
    def last_path(self) -> Path | None:
        return self.dir / self.last["path"] if self.last else None

    @property
    def best_path(self) -> Path | None:
        return self.dir / self.best["path"] if self.best else None

    def _pointer(self, record: dict) -> dict:
        return {**record, "monitor": self.monitor, "mode": self.mode}

    # -- saving
    def save(
        self,
        model,
        optimizer,
        scheduler,
        epoch,
        val_loss,
        val_metrics,
        hyperparameters,
        value=None,
        *,
        global_step=0,
        scaler_state=None,
        tasks=None,
        extra=None,
        model_info=None,
    ) -> Path:
        """save_checkpoint + retention. `value`: the monitored value (default: val_metrics[monitor], or val_loss
        for "loss")."""
        if value is None:
            metrics = val_metrics or {}
            if self.monitor in metrics:
                value = metrics[self.monitor]
            elif self.monitor == "loss":
                value = val_loss
            else:
                raise CheckpointError(
                    f"monitor={self.monitor}: not in val_metrics ({', '.join(map(str, metrics)) or 'empty'}); pass "
                    "value= or a known metric"
                )
        value = finite_or_none(value)
        path = _save(
            model,
            optimizer,
            scheduler,
            epoch,
            val_loss,
            val_metrics,
            hyperparameters,
            self.output_dir,
            self.prefix,
            global_step=global_step,
            scaler_state=scaler_state,
            tasks=tasks,
            extra=extra,
            model_info=model_info,
            monitor={"name": self.monitor, "mode": self.mode, "value": value},
        )
        self.records.append({"path": path.name, "epoch": int(epoch), "global_step": int(global_step), "value": value})
        keep = {id(self.records[-1])}
        if self.save_top_k != 0:
            ranked = self._ranked()
            keep |= {id(r) for r in (ranked if self.save_top_k < 0 else ranked[: self.save_top_k])}
        dropped = [r for r in self.records if id(r) not in keep]
        self.records = [r for r in self.records if id(r) in keep]
        # Pointers first, deletions last: a crash in between leaves extra files, never dangling pointers.
        pointers = [
            (
                "index.json",
                {
                    "monitor": self.monitor,
                    "mode": self.mode,
                    "save_top_k": self.save_top_k,
                    "checkpoints": self.records,
                },
            ),
            ("last.json", self._pointer(self.last)),
        ]
        if self.best is not None:
            pointers.append(("best.json", self._pointer(self.best)))
        for name, content in pointers:
            try:
                write_json(self.dir / name, json_safe(content))
            except OSError as e:
                raise _write_error(self.dir / name, e, "update") from e
        for r in dropped:
            try:
                (self.dir / r["path"]).unlink()
            except FileNotFoundError:
                pass
        return path
