"""Stratified hold-out and k-fold indices over in-memory Splits."""

from __future__ import annotations

import numpy as np
import pytest

from emotrain.data.splitting import kfold_indices, stratified_holdout
from emotrain.data.types import Split, TaskSpec
from emotrain.errors import DataError

LABELS = ("joy", "anger", "fear")
MC = TaskSpec("emotion", LABELS, multilabel=False)


def multiclass_split(counts=(60, 30, 10)) -> Split:
    y = np.repeat(np.arange(len(counts)), counts).astype(np.int64)
    return Split(texts=[f"t{i}" for i in range(len(y))], targets={"emotion": y}, name="train")


def multilabel_split(n=300, seed=0) -> tuple[Split, TaskSpec]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 4)) < np.array([0.5, 0.25, 0.1, 0.05])).astype(np.float32)
    return Split(texts=[f"t{i}" for i in range(n)], targets={"tags": y}), TaskSpec("tags", ("a", "b", "c", "d"), True)


def test_holdout_multiclass_proportions_and_order():
    split = multiclass_split()
    rest, held = stratified_holdout(split, [MC], 0.2, seed=0)
    assert (len(rest), len(held)) == (80, 20) and held.name == "val" and rest.name == "train"
    assert np.bincount(held.targets["emotion"]).tolist() == [12, 6, 2]
    assert sorted(rest.texts + held.texts, key=lambda t: int(t[1:])) == split.texts
    assert rest.texts == sorted(rest.texts, key=lambda t: int(t[1:]))  # file order kept
    again = stratified_holdout(split, [MC], 0.2, seed=0)[1]
    assert again.texts == held.texts
    assert stratified_holdout(split, [MC], 0.2, seed=1)[1].texts != held.texts


def test_holdout_stratifies_on_named_task():
    split = multiclass_split()
    other = TaskSpec("parity", ("even", "odd"), False)
    split.targets["parity"] = (np.arange(len(split)) % 2).astype(np.int64)
    _, held = stratified_holdout(split, [MC, other], 0.5, seed=0, stratify_on="parity", held_name="test")
    assert held.name == "test" and np.bincount(held.targets["parity"]).tolist() == [25, 25]


def test_holdout_multilabel_keeps_label_shares():
    split, task = multilabel_split()
    rest, held = stratified_holdout(split, [task], 0.2, seed=3)
    assert len(rest) + len(held) == 300 and abs(len(held) - 60) <= 2
    assert set(rest.texts).isdisjoint(held.texts)
    diff = np.abs(rest.targets["tags"].mean(axis=0) - held.targets["tags"].mean(axis=0))
    assert np.all(diff < 0.03)


def test_holdout_too_few_of_a_class():
    with pytest.raises(DataError) as e:
        stratified_holdout(multiclass_split((20, 5, 1)), [MC], 0.2, seed=0, source="train.csv")
    msg = str(e.value)
    assert "'fear'" in msg and "only 1 example in train.csv" in msg and "data.val_file" in msg


def test_holdout_fraction_too_small_for_classes():
    with pytest.raises(DataError) as e:
        stratified_holdout(multiclass_split((20, 20, 20)), [MC], 0.02, seed=0)
    msg = str(e.value)
    assert "holds out 2 rows" in msg and "3 classes" in msg and "raise data.val_fraction" in msg


def test_holdout_rare_multilabel_label():
    split, task = multilabel_split()
    split.targets["tags"][:, 3] = 0
    split.targets["tags"][7, 3] = 1
    with pytest.raises(DataError) as e:
        stratified_holdout(split, [task], 0.2, seed=0)
    assert "class 'd'" in str(e.value) and "only 1 example" in str(e.value)


def test_holdout_bad_fraction():
    with pytest.raises(DataError) as e:
        stratified_holdout(multiclass_split(), [MC], 1.0, seed=0, held_name="test")
    assert "data.test_fraction=1" in str(e.value)


@pytest.mark.parametrize("stratified", [True, False])
def test_kfold_multiclass_covers_every_row_once(stratified):
    split = multiclass_split()
    held_all = []
    for fold in range(5):
        train_idx, held_idx = kfold_indices(split, MC, k=5, fold=fold, seed=0, stratified=stratified)
        assert len(train_idx) + len(held_idx) == 100 and len(np.intersect1d(train_idx, held_idx)) == 0
        assert np.all(np.diff(held_idx) > 0)
        if stratified:
            assert np.bincount(split.targets["emotion"][held_idx]).tolist() == [12, 6, 2]
        held_all.append(held_idx)
    assert np.array_equal(np.sort(np.concatenate(held_all)), np.arange(100))
    a = kfold_indices(split, "emotion", 5, 2, seed=7, stratified=stratified)[1]
    assert np.array_equal(a, kfold_indices(split, MC, 5, 2, seed=7, stratified=stratified)[1])


def test_kfold_multilabel():
    split, task = multilabel_split()
    held_all = np.concatenate([kfold_indices(split, task, 3, f, seed=0)[1] for f in range(3)])
    assert np.array_equal(np.sort(held_all), np.arange(300))
    _, held = kfold_indices(split, task, 3, 0, seed=0)
    diff = np.abs(split.targets["tags"][held].mean(axis=0) - split.targets["tags"].mean(axis=0))
    assert np.all(diff < 0.03)


def test_kfold_errors():
    split = multiclass_split()
    with pytest.raises(DataError) as e:
        kfold_indices(split, MC, k=5, fold=5, seed=0)
    assert "cv.fold=5 is outside 0..4" in str(e.value)
    with pytest.raises(DataError) as e:
        kfold_indices(split, MC, k=5, fold=-1, seed=0)
    assert "cv.fold=-1" in str(e.value)
    with pytest.raises(DataError) as e:
        kfold_indices(split, MC, k=1, fold=0, seed=0)
    assert "cv.k=1" in str(e.value)
    with pytest.raises(DataError) as e:
        kfold_indices(multiclass_split((20, 20, 3)), MC, k=5, fold=0, seed=0)
    msg = str(e.value)
    assert "'fear'" in msg and "only 3 examples" in msg and "cv.stratified=false" in msg
    # without stratification the small class is no obstacle
    kfold_indices(multiclass_split((20, 20, 3)), MC, k=5, fold=0, seed=0, stratified=False)


def test_holdout_errors_show_configured_fraction():
    with pytest.raises(DataError) as e:
        stratified_holdout(multiclass_split((20, 20, 1)), [MC], 0.1111, seed=0, shown_fraction=0.1)
    assert "(data.val_fraction=0.1)" in str(e.value)
