"""What a user watches: a short console, progress for long steps, the results at the end.

- The console (Hydra's job logging, conf/hydra/job_logging/emotrain.yaml) shows short lines; the
  run's `emotrain.log` gets every record. Records logged with ``extra=FILE_ONLY`` (reproducibility
  details, checkpoint paths, timings) go to the log file only.
- `progress(...)`: a tqdm bar on a terminal; elsewhere (a log file, CI, nohup) one line every
  `LINE_INTERVAL_S` seconds instead of bar redraws, so logs hold no escape codes.
- `results_table(...)`: the per-task test results printed at the end of a run.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator

FILE_ONLY = {"file_only": True}  # logging extra: this record goes to the run's log file, not the console
LINE_INTERVAL_S = 30.0  # not a terminal: one progress line this often (and at the end of a step that took longer)

log = logging.getLogger("emotrain")


class ConsoleFilter(logging.Filter):
    """Keeps FILE_ONLY records off the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)


class ConsoleFormatter(logging.Formatter):
    """`[12:03:04] message`; warnings and errors say so: `[12:03:04] WARNING: message`."""

    def __init__(self, fmt: str | None = None, datefmt: str | None = "%H:%M:%S"):
        super().__init__("[%(asctime)s] %(message)s", datefmt=datefmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.WARNING:
            stamp, _, message = text.partition("] ")
            return f"{stamp}] {record.levelname}: {message}"
        return text


class ConsoleHandler(logging.StreamHandler):
    """The console's handler. While a progress bar is on screen, a line goes through `tqdm.write`, which clears the
    bar, writes the line and redraws the bar below it; written directly, line and bar garble each other."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm = sys.modules.get("tqdm.std")  # a bar exists only if tqdm was imported
        if tqdm is None or not getattr(tqdm.tqdm, "_instances", None):
            super().emit(record)
            return
        try:
            tqdm.tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # logging's contract: a failing handler reports, never raises
            self.handleError(record)


def is_terminal(stream=None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """tqdm's interface for what emotrain uses (iteration, set_postfix, update, close), printed as periodic
    log lines."""

    def __init__(
        self, iterable: Iterable | None, desc: str, total: int | None, initial: int, unit: str, logger: logging.Logger
    ):
        self.iterable, self.desc, self.unit, self.log = iterable, desc, unit, logger
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = self.start_n = initial
        self.postfix = ""
        self.started = self.last = time.monotonic()
        self.closed = False

    def _line(self, done: bool = False) -> str:
        elapsed = time.monotonic() - self.started
        count = f"{self.n}/{self.total}" if self.total else str(self.n)
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0
        left = ""
        if not done and self.total and rate > 0:
            left = f", ~{(self.total - self.n) / rate:.0f}s left"
        post = f", {self.postfix}" if self.postfix else ""
        return f"{self.desc}: {count} {self.unit}{pct} in {elapsed:.0f}s ({rate:.1f} {self.unit}/s{left}){post}"

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= LINE_INTERVAL_S:
            self.last = now
            self.log.info("%s", self._line())

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if time.monotonic() - self.started >= LINE_INTERVAL_S:  # a long step says when it ended
                self.log.info("%s", self._line(done=True))

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        return self.total or 0


class _Silent:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def __len__(self):
        return len(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def progress(
    iterable: Iterable | None = None,
    *,
    desc: str,
    total: int | None = None,
    initial: int = 0,
    unit: str = "it",
    enabled: bool = True,
    leave: bool = False,
    logger: logging.Logger | None = None,
):
    """A progress display for a step that may take more than a few seconds (see the module docstring)."""
    if not enabled:
        return _Silent(iterable if iterable is not None else ())
    if is_terminal():
        try:
            from tqdm import tqdm
        except ImportError:  # an inference-only install has no tqdm: lines instead
            pass
        else:
            # " texts": tqdm glues the unit to the count ("1024texts") when the total is unknown
            return tqdm(
                iterable, desc=desc, total=total, initial=initial, unit=f" {unit}", leave=leave, dynamic_ncols=True
            )
    return LineProgress(iterable, desc, total, initial, unit, logger or log)


# --------------------------------------------------------------------------- the end of a run


def _cell(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def results_table(tasks: list[dict], test: dict, test_at_05: dict, *, n_test: int) -> list[str]:
    """Lines of the per-task test table: macro-F1, micro-F1, accuracy at the kept model's decisions; multi-label
    tasks also at 0.5, and a line saying what their columns mean."""
    any_ml = any(t["multilabel"] for t in tasks)
    head = f"{'task':<14} {'labels':>6} {'macro-F1':>9} {'micro-F1':>9} {'accuracy':>9}"
    if any_ml:
        head += f" {'macro-F1@0.5':>13} {'micro-F1@0.5':>13}"
    lines = [head]
    for t in tasks:
        name = t["name"]
        acc_key = "subset_accuracy" if t["multilabel"] else "accuracy"
        row = (
            f"{name:<14} {len(t['labels']):>6} {_cell(test.get(f'{name}/macro_f1')):>9} "
            f"{_cell(test.get(f'{name}/micro_f1')):>9} {_cell(test.get(f'{name}/{acc_key}')):>9}"
        )
        if any_ml:
            for metric in ("macro_f1", "micro_f1"):
                row += f" {_cell(test_at_05.get(f'{name}/{metric}')) if t['multilabel'] else '-':>13}"
        lines.append(row)
    lines.append(
        f"{'mean':<14} {'':>6} {_cell(test.get('macro_f1')):>9}   (test split, {n_test} examples; loss "
        f"{_cell(test.get('loss'))})"
    )
    if any_ml:
        lines.append(
            "multi-label tasks: macro-F1, micro-F1 and accuracy at the kept model's thresholds (below); accuracy = "
            "subset accuracy (every label right); @0.5: every label at 0.5"
        )
    return lines


def final_lines(results: dict, out_dir) -> list[str]:
    """The answer at the end of the console: per-task test results, how the kept epoch was chosen, the files."""
    from pathlib import Path

    lines = []
    best = results["best"]
    if results["test"]:
        lines.append(
            f"test results of the best epoch ({best['epoch']} of {results['epochs_run']}, by val {best['metric']}, "
            f"{best['mode']} = {best['value']:.4f}):"
        )
        table = results_table(
            results["tasks"], results["test"], results["test_at_0.5"], n_test=results["data_sizes"]["test"]
        )
        lines += [f"  {line}" for line in table]
        if results["decisions"]["applies_to"]:
            lines.append(f"  multi-label decisions: {results['decisions']['description']}")
    out_dir = Path(out_dir)
    files = [
        name
        for name in ("metrics.json", "report/report.html", "model/", "predictions_test.jsonl", "checkpoints/")
        if (out_dir / name.rstrip("/")).exists()
    ]
    lines.append(f"outputs in {out_dir}: {', '.join(files)}")
    return lines
