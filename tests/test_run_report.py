"""What a run tells its user: one "best" everywhere, numbers that say how they were obtained, a short console with
the answer at the end, a self-contained report.html, and progress lines (not bar redraws) off a terminal."""

from __future__ import annotations

import json
import logging
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import QUICK, TINY, run_emotrain, train

# The reproduction: a monitor other than the loss, a high lr; seed 4: the lowest-loss epoch (2) differs
# from the best (7).
MONITORED = [
    *TINY,
    "trainer.epochs=10",
    "optim.lr=2e-2",
    "trainer.monitor=emotion/accuracy",
    "trainer.monitor_mode=max",
    "deterministic=true",
    "trainer.num_threads=1",
    "trainer.progress=true",
    "seed=4",
]


class Page(HTMLParser):
    """Text of every cell, every img src, every link of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.cells, self.images, self.links, self.text = [], [], [], []
        self._cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self._cell = tag in ("td", "th")
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("a", "link", "script") and (attrs.get("href") or attrs.get("src")):
            self.links.append(attrs.get("href") or attrs.get("src"))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())
            if self._cell:
                self.cells.append(data.strip())


@pytest.fixture(scope="module")
def monitored_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("monitored")
    run = work / "run"
    proc = run_emotrain([*MONITORED, f"hydra.run.dir={run}"], work, timeout=300)  # stderr is a pipe: not a terminal
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc, json.loads((run / "metrics.json").read_text())


def test_every_output_names_the_monitored_best_epoch(monitored_run):
    run, _, metrics = monitored_run
    losses = [h["val"]["loss"] for h in metrics["history"]]
    lowest_loss_epoch = losses.index(min(losses)) + 1
    best = metrics["best"]
    assert best["metric"] == "emotion/accuracy" and best["mode"] == "max" and best["epoch"] == metrics["best_epoch"]
    assert best["epoch"] != lowest_loss_epoch, "the test needs the two to differ"
    report = json.loads((run / "report" / "report.json").read_text())
    assert report["best"]["epoch"] == report["best_epoch"] == best["epoch"]
    kept = f"epoch {best['epoch']} (by val emotion/accuracy, max = {best['value']:.4f})"
    assert f"Kept model: {kept}" in (run / "report" / "summary.txt").read_text()
    assert f"Kept model:</b> {kept}" in (run / "report" / "report.html").read_text()
    ckpt = json.loads((run / "checkpoints" / "best.json").read_text())
    assert ckpt["epoch"] == best["epoch"]  # the model kept is the one the reports name
    assert metrics["decisions"]["policy"] == "argmax" and metrics["decisions"]["applies_to"] == []  # nothing tuned


def test_summary_leads_with_the_answer(monitored_run):
    run, _, metrics = monitored_run
    lines = (run / "report" / "summary.txt").read_text().splitlines()
    head = lines.index("Test results (model of the kept epoch):")
    assert head < 6 and lines.index("Configuration:") > lines.index("Training:") > head
    row = lines[head + 2].split()
    assert row[0] == "emotion" and float(row[2]) == pytest.approx(metrics["test"]["emotion/macro_f1"], abs=5e-5)
    text = "\n".join(lines)
    assert text.count("Versions:") == 1 and text.count("torch ") == 1 and "limit:" not in text


def test_console_is_short_and_ends_with_the_results(monitored_run):
    run, proc, metrics = monitored_run
    out = proc.stdout.splitlines()
    first_epoch = next(i for i, line in enumerate(out) if "epoch 1/10:" in line)
    assert first_epoch <= 10, out[:first_epoch]  # the start banner
    banner = "\n".join(out[:first_epoch])
    assert f"run directory: {run}" in banner and "precision" in banner and "tasks: emotion (7 classes)" in banner
    assert (
        "reproducibility" not in proc.stdout and "limit:" not in proc.stdout and "saved checkpoint" not in proc.stdout
    )
    log_file = (run / "emotrain.log").read_text()
    assert "reproducibility:" in log_file and "saved checkpoint" in log_file  # the details are in the log file
    epoch_line = next(line for line in out if "epoch 1/10:" in line)
    assert "| val emotion/accuracy " in epoch_line and "(best " in epoch_line  # the monitor, named once
    tail = out[-8:]
    assert any("test results of the best epoch" in line for line in tail)
    emotion = next(line for line in tail if re.search(r"\]\s+emotion\s", line))
    assert f"{metrics['test']['emotion/macro_f1']:.4f}" in emotion
    assert tail[-1].split("] ", 1)[1].startswith(f"outputs in {run}: metrics.json, report/report.html")
    # stderr is not a terminal: no bar redraws or cursor codes in a captured log
    assert "\x1b[" not in proc.stderr and "\r" not in proc.stderr and "\x1b[" not in proc.stdout


def test_report_html_is_self_contained_and_matches_metrics(monitored_run):
    run, _, metrics = monitored_run
    page = Page((run / "report" / "report.html").read_text())
    assert len(page.images) >= 4 and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert not page.links  # nothing fetched: opens from disk anywhere
    for task in ("emotion", "sentiment"):
        assert f"{metrics['test'][f'{task}/macro_f1']:.4f}" in page.cells
    per_class = metrics["test_per_class"]["emotion"]
    order = [label for label in page.cells if label in per_class]
    f1 = [per_class[label]["f1"] for label in order[: len(per_class)]]
    assert f1 == sorted(f1, reverse=True)  # ordered by F1, best first
    html = (run / "report" / "report.html").read_text()
    assert "<details><summary>" in html and "keys</summary>" in html  # the configuration, collapsed
    sizes = metrics["data_sizes"]
    assert f"Trained on data: train {sizes['train']}, val {sizes['val']}, test {sizes['test']}; 10 epochs" in html


def test_multilabel_numbers_say_at_which_thresholds(goemotions_slice, tmp_path, monkeypatch):
    monkeypatch.setenv("EMOTRAIN_CACHE", str(tmp_path / "cache"))
    results = train(
        [*QUICK, "report=true", "data=goemotions", f"data.dir={goemotions_slice}", "trainer.epochs=2", "optim.lr=5e-3"],
        tmp_path,
    )
    assert results["decisions"]["policy"] == "tuned" and results["decisions"]["applies_to"] == [
        "emotion",
        "ekman",
        "sentiment",
    ]
    for h in results["history"]:
        val = h["val"]
        for task in ("emotion", "ekman", "sentiment"):
            assert f"{task}/macro_f1_tuned" in val and f"{task}/macro_f1" in val  # tracked both ways, every epoch
    assert (
        results["best_val"]["macro_f1_tuned"] == results["history"][results["best_epoch"] - 1]["val"]["macro_f1_tuned"]
    )
    run = Path(results["config"]["paths"]["output_dir"])
    summary = (run / "report" / "summary.txt").read_text()
    assert "(emotion, ekman, sentiment): per-label thresholds tuned on val" in summary
    assert "macro-F1@0.5" in summary and "micro-F1@0.5" in summary and "accuracy = subset accuracy" in summary
    assert "Decision thresholds per label:" in summary
    # every validation number says how it was obtained: the plain keys at 0.5, *_tuned at the epoch's thresholds
    assert "plain F1 and accuracy values at threshold 0.5; *_tuned: at tuned thresholds" in summary
    per_epoch = summary.split("Per epoch:")[1].split("\n\n")[0]
    assert "macro-F1@0.5" in per_epoch and "macro-F1 tuned" in per_epoch
    kept = results["history"][results["best_epoch"] - 1]["val"]
    assert f"{kept['macro_f1_tuned']:.4f}" in per_epoch
    page = Page((run / "report" / "report.html").read_text())
    assert "macro-F1 at 0.5" in page.cells and "Decision thresholds" in page.text
    assert f"{results['test_at_0.5']['emotion/macro_f1']:.4f}" in page.cells


def test_log_lines_and_bars_do_not_garble_a_terminal(tmp_path):
    """On a terminal the bars (stderr) and the log lines (stdout) share one screen: every log line starts on a line
    of its own (the bar is cleared first), never glued to the end of a bar."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    from conftest import subprocess_env

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 x 120: bars need a width
    # evaluations every 5 steps: their log lines come while the epoch's bar is on screen
    args = [
        *QUICK,
        "trainer.epochs=2",
        "trainer.eval_every_steps=5",
        "trainer.progress=true",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "emotrain", *args],
        cwd=tmp_path,
        env=subprocess_env(tmp_path / "cache"),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    raw = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        raw += chunk
    os.close(master)
    assert proc.wait(timeout=240) == 0, raw[-3000:]
    text = raw.decode("utf-8", "replace")
    assert "batches/s]" in text or "batches]" in text, "no progress bar was drawn on the terminal"
    starts = [m.start() for m in re.finditer(r"\[\d\d:\d\d:\d\d\] ", text)]
    assert len(starts) > 5
    glued = [text[max(0, i - 40) : i + 30] for i in starts if i and text[i - 1] not in "\r\n"]
    assert not glued, glued


def test_progress_lines_off_a_terminal(monkeypatch, caplog):
    from emotrain import console

    monkeypatch.setattr(console, "LINE_INTERVAL_S", 0.0)
    monkeypatch.setattr(console, "is_terminal", lambda stream=None: False)
    with caplog.at_level(logging.INFO, logger="emotrain"):
        seen = list(console.progress(range(4), desc="evaluating validation split", unit="batches"))
    assert seen == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("evaluating validation split: 1/4 batches (25%)") and lines[-1].startswith(
        "evaluating validation split: 4/4 batches (100%)"
    )
    assert not any("\r" in line or "\x1b" in line for line in lines)


def test_a_data_error_prints_only_its_line(tmp_path):
    bad = tmp_path / "one.csv"
    bad.write_text("text,label\n" + "".join(f"text {i},joy\n" for i in range(20)))
    proc = run_emotrain(
        [
            *QUICK,
            "data=table",
            f"data.train_file={bad}",
            "+data.tasks.emotion.column=label",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "single class" in proc.stderr
