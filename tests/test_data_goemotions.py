"""data=goemotions: a slice of the real shared files (copied into tmp_path), the full
directory when present, the packaged mappings, and the DataErrors for bad files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from emotrain.data.goemotions import load_goemotions, load_mapping
from emotrain.data.loading import load_data
from emotrain.errors import DataError

# ../shared/data/goemotions relative to the repository root, unless overridden.
GOEMOTIONS_DIR = Path(
    os.environ.get("EMOTRAIN_GOEMOTIONS_DIR") or Path(__file__).resolve().parents[1].parent / "shared/data/goemotions"
)
FILES = ("train.tsv", "dev.tsv", "test.tsv")
SLICE_LINES = 300

needs_shared = pytest.mark.skipif(
    not (GOEMOTIONS_DIR / "train.tsv").is_file(), reason=f"GoEmotions not found at {GOEMOTIONS_DIR}"
)


@pytest.fixture
def goemotions_slice(tmp_path: Path) -> Path:
    """The first SLICE_LINES lines of each split plus labels.txt, in a temporary directory."""
    if not (GOEMOTIONS_DIR / "train.tsv").is_file():
        pytest.skip(f"GoEmotions not found at {GOEMOTIONS_DIR}")
    out = tmp_path / "goemotions"
    out.mkdir()
    for name in FILES:
        with open(GOEMOTIONS_DIR / name, "rb") as f:
            head = b"".join(f.readline() for _ in range(SLICE_LINES))
        (out / name).write_bytes(head)
    shutil.copyfile(GOEMOTIONS_DIR / "labels.txt", out / "labels.txt")
    return out


def message(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text, "DataError messages are one line"
    return text


def expected_coarse(emotion: np.ndarray, fine: tuple[str, ...], mapping: dict) -> np.ndarray:
    """Coarse multi-hot recomputed row by row (independent of the loader's matrix product)."""
    coarse = list(mapping)
    out = np.zeros((len(emotion), len(coarse)), dtype=np.float32)
    for r, row in enumerate(emotion):
        for i in np.flatnonzero(row):
            for j, group in enumerate(coarse):
                if fine[i] in mapping[group]:
                    out[r, j] = 1.0
    return out


def test_slice_three_multilabel_tasks(goemotions_slice):
    b = load_goemotions(goemotions_slice)
    assert [t.name for t in b.tasks] == ["emotion", "ekman", "sentiment"]
    assert all(t.multilabel for t in b.tasks)
    assert b.task("emotion").num_labels == 28 and b.task("emotion").labels[-1] == "neutral"
    assert b.task("ekman").labels == ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")
    assert b.task("sentiment").labels == ("positive", "negative", "ambiguous", "neutral")
    assert (len(b.train), len(b.val), len(b.test)) == (SLICE_LINES,) * 3
    assert b.val.name == "val" and b.sources["val"].endswith("dev.tsv")
    y = b.train.targets["emotion"]
    assert y.dtype == np.float32 and y.shape == (SLICE_LINES, 28)
    assert np.all(y.sum(axis=1) >= 1)
    # first line of train.tsv: "My favourite food is anything I didn't have to cook myself.\t27\teebbqej"
    assert b.train.texts[0] == "My favourite food is anything I didn't have to cook myself."
    assert y[0].nonzero()[0].tolist() == [27]
    for task in ("ekman", "sentiment"):
        np.testing.assert_array_equal(
            b.train.targets[task], expected_coarse(y, b.task("emotion").labels, load_mapping(task))
        )


def test_quotes_and_multi_label_rows_read_verbatim(tmp_path, goemotions_slice):
    lines = ['"Quoted" start and "unbalanced\t3,15\tabc1\n', "plain text\t27\tabc2\n"]
    (goemotions_slice / "dev.tsv").write_text("".join(lines), encoding="utf-8")
    b = load_goemotions(goemotions_slice)
    assert b.val.texts == ['"Quoted" start and "unbalanced', "plain text"]
    assert b.val.targets["emotion"][0].nonzero()[0].tolist() == [3, 15]


def test_task_selection_and_unknown_task(goemotions_slice):
    b = load_data(
        {"kind": "goemotions", "dir": str(goemotions_slice), "tasks": ["ekman"], "primary_task": "ekman"}, Path("/")
    )
    assert [t.name for t in b.tasks] == ["ekman"] and set(b.train.targets) == {"ekman"}
    with pytest.raises(DataError) as e:
        load_goemotions(goemotions_slice, tasks=["emotion", "ekmann"])
    assert "'ekmann'" in message(e) and "emotion, ekman, sentiment" in message(e)


def test_relative_dir_resolves_against_root(goemotions_slice):
    b = load_data(
        {"kind": "goemotions", "dir": "goemotions", "max_train_examples": 10, "max_eval_examples": 5},
        goemotions_slice.parent,
    )
    assert (len(b.train), len(b.val), len(b.test)) == (10, 5, 5) and b.primary_task == "emotion"


def test_wrong_column_count(goemotions_slice):
    path = goemotions_slice / "train.tsv"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[4] = "text with a\ttab\t3\tabc\n"
    path.write_text("".join(lines), encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_goemotions(goemotions_slice)
    msg = message(e)
    assert "train.tsv line 5" in msg and "expected 3 columns" in msg and "found 4" in msg and "label ids" in msg


def test_label_id_out_of_range(goemotions_slice):
    (goemotions_slice / "test.tsv").write_text("fine\t1\ta\nbad one\t2,28\tb\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_goemotions(goemotions_slice)
    msg = message(e)
    assert "test.tsv line 2" in msg and "label id 28" in msg and "0..27" in msg


def test_non_integer_label_ids(goemotions_slice):
    (goemotions_slice / "test.tsv").write_text("fine\t1\ta\nbad one\tjoy\tb\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_goemotions(goemotions_slice)
    assert "test.tsv line 2" in message(e) and "'joy'" in message(e)


def test_empty_text(goemotions_slice):
    (goemotions_slice / "dev.tsv").write_text("fine\t1\ta\n \t2\tb\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_goemotions(goemotions_slice)
    assert "dev.tsv line 2" in message(e) and "empty text" in message(e)


def test_empty_split_file(goemotions_slice):
    (goemotions_slice / "dev.tsv").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_goemotions(goemotions_slice)
    assert "dev.tsv has no data rows" in message(e)


def test_missing_file_and_dir(goemotions_slice):
    (goemotions_slice / "dev.tsv").unlink()
    with pytest.raises(DataError) as e:
        load_goemotions(goemotions_slice)
    assert "dev.tsv does not exist" in message(e) and "data.dir" in message(e)
    with pytest.raises(DataError) as e:
        load_goemotions(goemotions_slice / "nope")
    assert "nope does not exist" in message(e) and "labels.txt" in message(e)


def test_undecodable_bytes(goemotions_slice):
    (goemotions_slice / "train.tsv").write_bytes(b"ok\t1\ta\nbad \xff\t1\tb\n")
    with pytest.raises(DataError) as e:
        load_goemotions(goemotions_slice)
    assert "train.tsv line 2 (byte offset 11)" in message(e) and "UTF-8" in message(e)


def test_crlf_and_bom(goemotions_slice):
    (goemotions_slice / "dev.tsv").write_bytes("\ufeffone\t1\ta\r\ntwo\t2,3\tb\r\n".encode("utf-8"))
    b = load_goemotions(goemotions_slice)
    assert b.val.texts == ["one", "two"]
    assert b.val.targets["emotion"][1].nonzero()[0].tolist() == [2, 3]


def test_packaged_mappings_match_readme():
    ekman, sentiment = load_mapping("ekman"), load_mapping("sentiment")
    assert ekman["neutral"] == ("neutral",) and sentiment["neutral"] == ("neutral",)
    assert ekman["surprise"] == ("surprise", "realization", "confusion", "curiosity")
    assert set(sentiment["ambiguous"]) == {"realization", "surprise", "curiosity", "confusion"}
    # each of the 28 labels in exactly one group
    for mapping in (ekman, sentiment):
        flat = [x for group in mapping.values() for x in group]
        assert len(flat) == len(set(flat)) == 28


@needs_shared
def test_packaged_mappings_match_shared_json():
    for task in ("ekman", "sentiment"):
        shared_file = GOEMOTIONS_DIR / f"{task}_mapping.json"
        if not shared_file.is_file():
            pytest.skip(f"{shared_file} not found")
        shared = json.loads(shared_file.read_text(encoding="utf-8"))
        shared.setdefault("neutral", ["neutral"])
        assert {k: set(v) for k, v in load_mapping(task).items()} == {k: set(v) for k, v in shared.items()}


@needs_shared
def test_full_directory():
    b = load_goemotions(GOEMOTIONS_DIR)
    assert (len(b.train), len(b.val), len(b.test)) == (43_410, 5_426, 5_427)
    fine = b.task("emotion").labels
    for split in (b.train, b.val, b.test):
        emotion = split.targets["emotion"]
        assert emotion.shape[1] == 28 and np.all(emotion.sum(axis=1) >= 1)
        for task in ("ekman", "sentiment"):
            coarse = split.targets[task]
            assert coarse.dtype == np.float32
            # a coarse label is on exactly when one of its fine labels is on
            mapping = load_mapping(task)
            for j, group in enumerate(mapping):
                members = [fine.index(x) for x in mapping[group]]
                np.testing.assert_array_equal(coarse[:, j], emotion[:, members].max(axis=1))
