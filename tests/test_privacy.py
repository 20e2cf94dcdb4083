"""With the PII scrub on (the default), raw texts' e-mails, phone numbers, URLs, handles and card
numbers never reach the logs, reports, run files, the cache or the console - not even in error
messages that quote a cell."""

from __future__ import annotations

import csv
import io
import random

import pytest
from test_bad_inputs import Case, run_batch

PII = [
    "olivia.hart@example.com",
    "m.okafor+news@mailbox.example.net",
    "+1 (415) 555-0134",
    "020 7946 0958",
    "https://private.example.org/u/olivia?token=93af",
    "www.secret-diary.example.com/entries/42",
    "@olivia_h",
    "4111 1111 1111 1111",
]
LABELS = ["joy", "anger", "fear"]
TEMPLATES = {
    "joy": ["so happy! write me at {}", "best day ever, call {}", "love this, see {}"],
    "anger": ["this is outrageous, complain to {}", "furious, reach me on {}", "stop spamming {}"],
    "fear": ["scared, please call {} now", "I'm afraid, message {}", "terrified, my card {} was stolen"],
}


def _pii_table() -> str:
    rng = random.Random(0)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["text", "label"])
    for i in range(60):
        label = LABELS[i % 3]
        writer.writerow([rng.choice(TEMPLATES[label]).format(PII[i % len(PII)]), label])
    return buf.getvalue()


def _leaks(blob: bytes) -> list[str]:
    text = blob.decode("utf-8", errors="replace")
    return [p for p in PII if p in text or p.encode("utf-16-le") in blob]


@pytest.fixture(scope="module")
def private_runs(tmp_path_factory):
    work = tmp_path_factory.mktemp("privacy")
    (work / "pii.csv").write_text(_pii_table(), encoding="utf-8")
    assert set(_leaks((work / "pii.csv").read_bytes())) == set(PII)  # the scanner sees them where they are
    # A val file whose label column holds texts (columns mixed up), and a train file without its header row.
    (work / "pii_val.csv").write_text(
        "text,label\nfine,joy\njoy,write olivia.hart@example.com or call +1 (415) 555-0134\n", encoding="utf-8"
    )
    (work / "no_header.csv").write_text(
        "contact olivia.hart@example.com,joy\nurgent: https://private.example.org/u/olivia?token=93af,fear\n",
        encoding="utf-8",
    )
    table = ["data=table", "+data.tasks.emotion.column=label"]
    cases = [
        Case(
            "train_report_export",
            [
                *table,
                "data.train_file={work}/pii.csv",
                "trainer.epochs=2",
                "report=true",
                "checkpoint.export=true",
                "data.max_eval_examples=null",
                "trainer.log_every_steps=1",
            ],
            valid=True,
        ),
        Case("frozen_with_feature_cache", [*table, "data.train_file={work}/pii.csv", "freeze=full"], valid=True),
        Case(
            "label_cell_holds_text",
            [*table, "data.train_file={work}/pii.csv", "data.val_file={work}/pii_val.csv"],
            ["pii_val.csv line 3", "[EMAIL]"],
        ),
        Case(
            "file_without_header",
            [*table, "data.train_file={work}/no_header.csv"],
            ["no_header.csv", "no column 'text'", "'contact [EMAIL]'"],
        ),
        Case(
            "text_as_label_column",
            ["data=table", "+data.tasks.emotion.column=text", "data.train_file={work}/pii.csv"],
            ["both name column 'text'"],
        ),
    ]
    return work, cases, run_batch(cases, work)


def test_no_pii_in_console_logs_reports_or_files(private_runs):
    work, cases, outcomes = private_runs
    for case in cases:
        outcome = outcomes[case.name]
        if case.valid:
            assert outcome.rc == 0, f"{case.name}: {outcome.err[-3000:]}\n{outcome.out[-2000:]}"
        else:
            assert outcome.rc == 2 and all(x in outcome.err for x in case.expect), f"{case.name}: {outcome.err}"
        assert not _leaks(outcome.out.encode() + outcome.err.encode()), f"{case.name}: PII on the console"
        run_dir = outcome.run_dir
        files = [p for p in run_dir.rglob("*") if p.is_file()]
        assert files, f"{case.name}: no run directory"
        for path in files:  # emotrain.log, metrics.json, status.json, report/*, .hydra/*, model/*, checkpoints/*
            leaked = _leaks(path.read_bytes())
            assert not leaked, f"{path} holds {leaked}"
    # the runs really produced the usual artefacts
    done = outcomes["train_report_export"].run_dir
    for name in (
        "emotrain.log",
        "metrics.json",
        "report/report.json",
        "report/summary.txt",
        "model/emotrain_model.json",
        ".hydra/config.yaml",
    ):
        assert (done / name).is_file(), name


def test_no_pii_in_the_cache(private_runs):
    work, _, _ = private_runs
    files = [p for p in (work / "cache").rglob("*") if p.is_file()]
    assert any("features" in p.parts for p in files) and any("tokens" in p.parts for p in files)
    for path in files:
        assert not _leaks(path.read_bytes()), path


def test_cached_token_ids_are_of_scrubbed_texts(private_runs):
    """The token cache holds ids of the scrubbed texts: decoding them gives back no PII."""
    import numpy as np
    from transformers import AutoTokenizer

    from emotrain.models.backbones import minilm_path

    work, _, _ = private_runs
    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    decoded = []
    for path in (work / "cache" / "tokens").glob("*.npz"):
        with np.load(path, allow_pickle=False) as z:
            decoded.append(tok.decode(z["ids"].tolist()))
    text = " ".join(decoded)
    assert "[ email ]" in text.lower() or "[email]" in text.lower()
    squashed = text.replace(" ", "").lower()
    for p in PII:
        assert p.replace(" ", "").lower() not in squashed, p
