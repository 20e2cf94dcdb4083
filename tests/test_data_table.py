"""data=table: every file format, labels as names / ids / multi-label, held-out splits,
and the one-line DataError for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from emotrain.data.loading import load_data
from emotrain.errors import DataError


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def cfg(train_file: str, tasks: dict | None = None, **kw) -> dict:
    """A data=table node as a plain dict (load_data fills in the schema defaults)."""
    if tasks is None:
        tasks = {"emotion": {"column": "label"}}
    return {"kind": "table", "train_file": train_file, "tasks": tasks, **kw}


def three_files(tmp_path: Path, ext: str, rows: dict[str, str]) -> dict:
    """Write train/val/test files with the given contents; return the file settings."""
    for split, text in rows.items():
        write(tmp_path / f"{split}.{ext}", text)
    return {"train_file": f"train.{ext}", "val_file": f"val.{ext}", "test_file": f"test.{ext}"}


def message(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, "DataError messages are one line"
    return text


# --------------------------------------------------------------------------- formats


def test_csv_with_header_names(tmp_path):
    files = three_files(
        tmp_path,
        "csv",
        {
            "train": "text,label\nI am happy,joy\nso angry,anger\nyay,joy\n",
            "val": "text,label\nhmm happy,joy\n",
            "test": "text,label\nfurious,anger\n",
        },
    )
    b = load_data({"kind": "table", "tasks": {"emotion": {"column": "label"}}, **files}, tmp_path)
    assert [t.to_dict() for t in b.tasks] == [{"name": "emotion", "labels": ["anger", "joy"], "multilabel": False}]
    assert b.train.texts == ["I am happy", "so angry", "yay"]
    assert b.train.targets["emotion"].dtype == np.int64
    assert b.train.targets["emotion"].tolist() == [1, 0, 1]
    assert b.val.targets["emotion"].tolist() == [1]
    assert b.test.texts == ["furious"] and b.test.targets["emotion"].tolist() == [0]
    assert b.primary_task == "emotion"
    assert b.sources["train"] == str(tmp_path / "train.csv")


def test_csv_without_header_uses_positions(tmp_path):
    files = three_files(tmp_path, "csv", {s: "joy,I am happy\nanger,so angry\n" for s in ("train", "val", "test")})
    b = load_data(
        {"kind": "table", "header": False, "text_column": "1", "tasks": {"emotion": {"column": "0"}}, **files}, tmp_path
    )
    assert b.train.texts == ["I am happy", "so angry"]
    assert b.train.targets["emotion"].tolist() == [1, 0]


def test_tsv_keeps_quotes_verbatim(tmp_path):
    files = three_files(
        tmp_path,
        "tsv",
        {s: 'text\tlabel\n"Quoted" start\tjoy\nit\'s "fine\tanger\n' for s in ("train", "val", "test")},
    )
    b = load_data(cfg(**files, tasks={"emotion": {"column": "label"}}), tmp_path)
    assert b.train.texts == ['"Quoted" start', "it's \"fine"]


@pytest.mark.parametrize("sep", [";", "|", "\\t"])
def test_custom_separator_with_csv_quoting(tmp_path, sep):
    real = "\t" if sep == "\\t" else sep
    body = f'text{real}label\nhello, world{real}joy\n"a {real} b"{real}anger\n'
    files = three_files(tmp_path, "csv", {s: body for s in ("train", "val", "test")})
    b = load_data(cfg(**files, sep=sep), tmp_path)
    assert b.train.texts == ["hello, world", f"a {real} b"]


def test_txt_is_read_like_tsv_with_any_sep(tmp_path):
    body = 'text|label\n"quoted" start|joy\nplain, text|anger\n'
    files = three_files(tmp_path, "txt", {s: body for s in ("train", "val", "test")})
    b = load_data(cfg(**files, sep="|"), tmp_path)
    assert b.train.texts == ['"quoted" start', "plain, text"]


def test_jsonl_names_and_lists(tmp_path):
    lines = [
        {"text": "happy and scared", "labels": ["joy", "fear"]},
        {"text": "just scared", "labels": "fear"},
        {"text": "nothing", "labels": []},
    ]
    body = "\n".join(json.dumps(r) for r in lines) + "\n\n"
    files = three_files(tmp_path, "jsonl", {s: body for s in ("train", "val", "test")})
    b = load_data(cfg(**files, tasks={"emo": {"column": "labels", "multilabel": True}}), tmp_path)
    assert b.tasks[0].labels == ("fear", "joy") and b.tasks[0].multilabel
    y = b.train.targets["emo"]
    assert y.dtype == np.float32 and y.tolist() == [[1, 1], [1, 0], [0, 0]]


def test_parquet_int_ids_and_list_column(tmp_path):
    df = pd.DataFrame(
        {
            "sentence": ["a", "b", "c", "d"],
            "y": [0, 2, 1, 2],
            "tags": [["x"], ["x", "y"], [], ["y"]],
        }
    )
    for s in ("train", "val", "test"):
        df.to_parquet(tmp_path / f"{s}.parquet")
    b = load_data(
        {
            "kind": "table",
            "train_file": "train.parquet",
            "val_file": "val.parquet",
            "test_file": "test.parquet",
            "text_column": "sentence",
            "tasks": {
                "emotion": {"column": "y", "ids": True, "labels": ["anger", "joy", "fear"]},
                "tags": {"column": "tags", "multilabel": True},
            },
        },
        tmp_path,
    )
    assert b.task("emotion").labels == ("anger", "joy", "fear")
    assert b.train.targets["emotion"].tolist() == [0, 2, 1, 2]
    assert b.train.targets["tags"].tolist() == [[1, 0], [1, 1], [0, 0], [0, 1]]


def test_ids_without_labels_order_by_integer_value(tmp_path):
    files = three_files(tmp_path, "csv", {s: "text,label\na,10\nb,2\nc,02\nd,0\n" for s in ("train", "val", "test")})
    b = load_data(cfg(**files, tasks={"emotion": {"column": "label", "ids": True}}), tmp_path)
    assert b.tasks[0].labels == ("0", "2", "10")
    assert b.train.targets["emotion"].tolist() == [2, 1, 1, 0]


def test_multilabel_delimiter_strips_and_drops_empties(tmp_path):
    body = "text,labels\nfirst, joy ; fear ;\nsecond,fear\nthird,\n"
    files = three_files(tmp_path, "csv", {s: body for s in ("train", "val", "test")})
    b = load_data(cfg(**files, tasks={"emotion": {"column": "labels", "multilabel": True, "delimiter": ";"}}), tmp_path)
    assert b.tasks[0].labels == ("fear", "joy")
    assert b.train.targets["emotion"].tolist() == [[1, 1], [1, 0], [0, 0]]


def test_bom_crlf_quoting_and_duplicates(tmp_path):
    body = '\ufefftext,label\r\n"hello, world",joy\r\n"two\r\nlines",anger\r\n"say ""hi""",joy\r\n"say ""hi""",joy\r\n'
    files = three_files(tmp_path, "csv", {s: body for s in ("train", "val", "test")})
    b = load_data(cfg(**files), tmp_path)
    assert b.train.texts == ["hello, world", "two\r\nlines", 'say "hi"', 'say "hi"']  # duplicates kept
    # line numbers count the physical lines of the two-line cell: the appended row is line 7
    write(tmp_path / "bad.csv", body + ",joy\r\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("bad.csv", val_file="val.csv", test_file="test.csv"), tmp_path)
    assert "bad.csv line 7" in message(e)


def test_multiple_tasks_and_primary_task(tmp_path):
    body = "text,emotion,sentiment\na,joy,positive\nb,anger,negative\n"
    files = three_files(tmp_path, "csv", {s: body for s in ("train", "val", "test")})
    tasks = {"emotion": {"column": "emotion"}, "sentiment": {"column": "sentiment"}}
    b = load_data(cfg(**files, tasks=tasks, primary_task="sentiment"), tmp_path)
    assert [t.name for t in b.tasks] == ["emotion", "sentiment"] and b.primary_task == "sentiment"
    with pytest.raises(DataError) as e:
        load_data(cfg(**files, tasks=tasks, primary_task="topic"), tmp_path)
    assert "data.primary_task='topic'" in message(e) and "emotion, sentiment" in message(e)


def test_caps_take_first_rows(tmp_path):
    body = "text,label\n" + "".join(f"t{i},{'joy' if i % 2 else 'anger'}\n" for i in range(10))
    files = three_files(tmp_path, "csv", {s: body for s in ("train", "val", "test")})
    b = load_data(cfg(**files, max_train_examples=3, max_eval_examples=2), tmp_path)
    assert b.train.texts == ["t0", "t1", "t2"] and b.val.texts == ["t0", "t1"] and b.test.texts == ["t0", "t1"]


def test_held_out_splits_are_stratified_and_seeded(tmp_path):
    rows = [(f"text {i}", lab) for lab, n in (("joy", 60), ("anger", 30), ("fear", 10)) for i in range(n)]
    write(tmp_path / "train.csv", "text,label\n" + "".join(f"{t} {lab},{lab}\n" for t, lab in rows))
    b = load_data(cfg("train.csv", val_fraction=0.2, test_fraction=0.1, split_seed=1), tmp_path)
    assert (len(b.train), len(b.val), len(b.test)) == (70, 20, 10)
    labels = b.task("emotion").labels
    for split, expected in ((b.val, {"joy": 12, "anger": 6, "fear": 2}), (b.test, {"joy": 6, "anger": 3, "fear": 1})):
        counts = np.bincount(split.targets["emotion"], minlength=3)
        assert {labels[i]: int(c) for i, c in enumerate(counts)} == expected
    assert set(b.train.texts).isdisjoint(b.val.texts) and set(b.val.texts).isdisjoint(b.test.texts)
    assert "val_fraction=0.2" in b.sources["val"]
    again = load_data(cfg("train.csv", val_fraction=0.2, test_fraction=0.1, split_seed=1), tmp_path)
    other = load_data(cfg("train.csv", val_fraction=0.2, test_fraction=0.1, split_seed=2), tmp_path)
    assert again.val.texts == b.val.texts and other.val.texts != b.val.texts
    no_test = load_data(cfg("train.csv", val_fraction=0.2, test_fraction=0.0), tmp_path)
    assert no_test.test is None and len(no_test.val) == 20


def test_multilabel_held_out_split(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(200):
        labs = [lab for lab, p in (("a", 0.5), ("b", 0.2), ("c", 0.1)) if rng.random() < p]
        lines.append(json.dumps({"text": f"t{i}", "y": labs}))
    write(tmp_path / "train.jsonl", "\n".join(lines))
    b = load_data(cfg("train.jsonl", tasks={"t": {"column": "y", "multilabel": True}}, test_fraction=0), tmp_path)
    assert len(b.val) == 20 and len(b.train) == 180
    share_train = b.train.targets["t"].mean(axis=0)
    share_val = b.val.targets["t"].mean(axis=0)
    assert np.all(np.abs(share_train - share_val) < 0.06)


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        load_data(cfg("nope.csv"), tmp_path)
    assert (
        str(tmp_path / "nope.csv") in message(e) and "does not exist" in message(e) and "data.train_file" in message(e)
    )


def test_missing_column_lists_available(tmp_path):
    write(tmp_path / "train.csv", "sentence,emotion\na,joy\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv", val_fraction=0.5), tmp_path)
    msg = message(e)
    assert "train.csv" in msg and "'text'" in msg and "'sentence', 'emotion'" in msg and "data.text_column" in msg


def test_missing_label_column_with_header_false_hint(tmp_path):
    write(tmp_path / "train.csv", "a,joy\nb,anger\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv", header=False, text_column="0"), tmp_path)
    assert "no column 'label'" in message(e) and "0-based positions" in message(e) and "'0', '1'" in message(e)


@pytest.mark.parametrize("cell", ["", "   "])
def test_empty_text_names_line(tmp_path, cell):
    write(tmp_path / "train.csv", f"text,label\na,joy\n{cell},anger\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv"), tmp_path)
    assert "train.csv line 3" in message(e) and "empty text" in message(e)


def test_non_text_cell_in_jsonl(tmp_path):
    write(tmp_path / "train.jsonl", '{"text": "ok", "label": "joy"}\n{"text": 12, "label": "joy"}\n')
    with pytest.raises(DataError) as e:
        load_data(cfg("train.jsonl"), tmp_path)
    assert "train.jsonl line 2" in message(e) and "a number (12), not text" in message(e)


def test_null_text_in_parquet_names_row(tmp_path):
    pd.DataFrame({"text": ["a", None], "label": ["joy", "joy"]}).to_parquet(tmp_path / "train.parquet")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.parquet"), tmp_path)
    assert "train.parquet row 2" in message(e) and "null" in message(e)


def test_label_id_out_of_range(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,0\nb,1\nc,3\n")
    with pytest.raises(DataError) as e:
        load_data(
            cfg("train.csv", tasks={"emotion": {"column": "label", "ids": True, "labels": ["x", "y", "z"]}}), tmp_path
        )
    msg = message(e)
    assert "train.csv line 4" in msg and "label id 3" in msg and "0..2" in msg


def test_label_id_not_an_integer(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,0\nb,joy\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv", tasks={"emotion": {"column": "label", "ids": True}}), tmp_path)
    assert "train.csv line 3" in message(e) and "'joy' is not an integer id" in message(e) and "ids=false" in message(e)


def test_val_label_unseen_in_training(tmp_path):
    files = three_files(
        tmp_path,
        "csv",
        {"train": "text,label\na,joy\nb,anger\n", "val": "text,label\nc,joy\nd,fear\n", "test": "text,label\ne,joy\n"},
    )
    with pytest.raises(DataError) as e:
        load_data(cfg(**files), tmp_path)
    msg = message(e)
    assert "val.csv line 3" in msg and "'fear'" in msg and "never occurs in the training split" in msg


def test_undecodable_bytes_suggest_encoding(tmp_path):
    (tmp_path / "train.csv").write_bytes(
        "text,label\nok,joy\nfine,anger\ncaf\u00e9,joy\nnope,anger\n".encode("latin-1")
    )
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv", val_fraction=0.5, test_fraction=0), tmp_path)
    msg = message(e)
    assert "train.csv line 4" in msg and "byte offset 32" in msg and "data.encoding" in msg
    b = load_data(cfg("train.csv", encoding="latin-1", val_fraction=0.5, test_fraction=0), tmp_path)
    assert "caf\u00e9" in b.train.texts + b.val.texts


@pytest.mark.parametrize("body", ["text,label\n", "", "text,label\n\n\n"])
def test_empty_split(tmp_path, body):
    files = three_files(tmp_path, "csv", {"train": "text,label\na,joy\n", "val": body, "test": "text,label\na,joy\n"})
    with pytest.raises(DataError) as e:
        load_data(cfg(**files), tmp_path)
    assert "val.csv" in message(e) and ("no data rows" in message(e) or "is empty" in message(e))


def test_empty_jsonl_and_parquet(tmp_path):
    write(tmp_path / "train.jsonl", "\n\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.jsonl"), tmp_path)
    assert "no data rows" in message(e)
    pd.DataFrame({"text": pd.Series([], dtype=str), "label": pd.Series([], dtype=str)}).to_parquet(
        tmp_path / "t.parquet"
    )
    with pytest.raises(DataError) as e:
        load_data(cfg("t.parquet"), tmp_path)
    assert "t.parquet has no data rows" in message(e)


def test_too_few_examples_for_held_out_split(tmp_path):
    write(tmp_path / "train.csv", "text,label\n" + "a,joy\n" * 20 + "b,fear\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv"), tmp_path)
    msg = message(e)
    assert "'fear'" in msg and "only 1 example" in msg and "train.csv" in msg and "data.test_file" in msg


def test_unknown_label_name_when_labels_given(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,joy\nb,angry\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv", tasks={"emotion": {"column": "label", "labels": ["joy", "anger"]}}), tmp_path)
    msg = message(e)
    assert (
        "train.csv line 3" in msg
        and "unknown label 'angry'" in msg
        and "(data.tasks.emotion.labels): joy, anger" in msg
    )


def test_malformed_jsonl_line(tmp_path):
    write(tmp_path / "train.jsonl", '{"text": "a", "label": "joy"}\n\n{"text": "b", "label": joy}\n')
    with pytest.raises(DataError) as e:
        load_data(cfg("train.jsonl"), tmp_path)
    assert "train.jsonl line 3" in message(e) and "not valid JSON" in message(e)


def test_jsonl_missing_key_names_line(tmp_path):
    write(tmp_path / "train.jsonl", '{"text": "a", "label": "joy"}\n{"text": "b"}\n')
    with pytest.raises(DataError) as e:
        load_data(cfg("train.jsonl"), tmp_path)
    assert "train.jsonl line 2" in message(e) and "'label'" in message(e)


def test_wrong_column_count_in_csv(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,joy\nhello, world,joy\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv"), tmp_path)
    msg = message(e)
    assert "train.csv line 3" in msg and "expected 2 columns" in msg and "found 3" in msg and "quote" in msg


def test_single_label_cell_with_several_labels(tmp_path):
    write(tmp_path / "train.jsonl", '{"text": "a", "label": ["joy", "fear"]}\n')
    with pytest.raises(DataError) as e:
        load_data(cfg("train.jsonl"), tmp_path)
    assert "line 1" in message(e) and "multilabel=true" in message(e)


def test_missing_single_label(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,joy\nb,\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv"), tmp_path)
    assert "train.csv line 3" in message(e) and "every row needs a label" in message(e)


def test_empty_tasks_tells_how_to_add_one(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,joy\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv", tasks={}), tmp_path)
    assert "+data.tasks.emotion.column=label" in message(e)


def test_unknown_extension_and_bad_sep(tmp_path):
    write(tmp_path / "train.dat", "text,label\na,joy\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.dat"), tmp_path)
    assert "'.dat'" in message(e) and "data.format" in message(e)
    with pytest.raises(DataError) as e:
        load_data(cfg("train.dat", format="csv", sep="::"), tmp_path)
    assert "data.sep='::'" in message(e)


def test_no_validation_split_possible(tmp_path):
    write(tmp_path / "train.csv", "text,label\na,joy\n")
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv", val_fraction=0.0), tmp_path)
    assert "data.val_file" in message(e)


def test_missing_train_file_setting(tmp_path):
    with pytest.raises(DataError) as e:
        load_data({"kind": "table", "tasks": {"emotion": {"column": "label"}}}, tmp_path)
    assert "data.train_file is not set" in message(e)


# --------------------------------------------------------------------------- data that would train a meaningless model


def _rows(labels: list[str], header: str = "text,tags") -> str:
    return header + "\n" + "".join(f'text number {i},"{lab}"\n' for i, lab in enumerate(labels))


def test_multilabel_task_with_every_label_always_off_or_on_is_refused(tmp_path):
    splits = {"val_file": "val.csv", "test_file": "test.csv"}
    tasks = {"tags": {"column": "tags", "multilabel": True, "labels": ["a", "b"]}}
    write(tmp_path / "val.csv", _rows(["a", "b", ""]))
    write(tmp_path / "test.csv", _rows(["a", "b", ""]))
    write(tmp_path / "train.csv", _rows(["a,b"] * 6))
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv", tasks, **splits), tmp_path)
    assert "task 'tags' has every label on in all 6 training rows" in message(e)
    write(tmp_path / "train.csv", _rows(["a,b"] * 3 + ["a"] * 3))  # b always on, a varies: learnable
    assert len(load_data(cfg("train.csv", tasks, **splits), tmp_path).train) == 6


def test_a_cap_that_leaves_one_class_is_refused(tmp_path):
    write(tmp_path / "train.csv", _rows(["joy"] * 5 + ["anger"] * 5, header="text,label"))
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv", val_fraction=0.2, test_fraction=0.0, split_seed=0, max_train_examples=1), tmp_path)
    assert "single class" in message(e) and "train.csv" in message(e)


def test_case_variants_take_the_configured_spelling(tmp_path, caplog):
    write(tmp_path / "train.csv", _rows(["Joy", "JOY", "anger", "Anger", "joy", "anger"] * 2, header="text,label"))
    write(tmp_path / "val.csv", _rows(["JOY", "ANGER"], header="text,label"))
    tasks = {"emotion": {"column": "label", "labels": ["anger", "Joy"]}}
    with caplog.at_level("WARNING"):
        bundle = load_data(cfg("train.csv", tasks, val_file="val.csv", test_fraction=0.0), tmp_path)
    assert bundle.tasks[0].labels == ("anger", "Joy")
    assert bundle.train.targets["emotion"].tolist() == [1, 1, 0, 0, 1, 0] * 2
    assert bundle.val.targets["emotion"].tolist() == [1, 0]
    warnings = [r.getMessage() for r in caplog.records if "differ only in case" in r.getMessage()]
    assert len(warnings) == 1 and "'JOY' -> 'Joy'" in warnings[0] and "'Anger' -> 'anger'" in warnings[0]


@pytest.mark.parametrize("marker", ["NaN", "nan", "null", "N/A", "#N/A", "<NA>"])
def test_missing_value_markers_are_not_labels(marker, tmp_path):
    write(tmp_path / "train.csv", _rows(["joy", "anger", marker, "joy"] * 3, header="text,label"))
    with pytest.raises(DataError) as e:
        load_data(cfg("train.csv"), tmp_path)
    assert "train.csv line 4" in message(e) and "missing-value marker" in message(e)


def test_files_that_are_not_what_their_name_says(tmp_path):
    import bz2

    text = _rows(["joy", "anger"] * 10, header="text,label")
    cases = {
        "utf16be.csv": (text.encode("utf-16-be"), "UTF-16 text (BE, no byte-order mark)", "data.encoding=utf-16-be"),
        "archive.csv": (b"PK\x03\x04" + b"\x00" * 40, "a zip archive", "save the sheet as CSV"),
        "packed.csv": (bz2.compress(text.encode()), "bzip2-compressed", ".bz2"),
        "table.csv": (b"PAR1" + b"\x00" * 40, "a Parquet file", "data.format=parquet"),
    }
    for name, (data, what, fix) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError) as e:
            load_data(cfg(name), tmp_path)
        assert name in message(e) and what in message(e) and fix in message(e), message(e)
