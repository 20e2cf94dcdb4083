"""Reorganising the code must not change what it computes: the golden matrix (tests/golden.py) against its record.

The record was made on one machine; another CPU kind rounds fp32 differently, so `differences` compares discrete
values exactly and floats within a relative tolerance (see tests/golden.py). The comparison itself is tested first.
"""

from __future__ import annotations

import copy
import json

import pytest

from golden import ABS_TOL, GOLDEN_FILE, REL_TOL, compute, differences

RECORD = json.loads(GOLDEN_FILE.read_text()) if GOLDEN_FILE.is_file() else {}


@pytest.fixture(scope="module")
def now(tmp_path_factory):
    return compute(tmp_path_factory.mktemp("golden"))


def test_golden_record_exists():
    assert GOLDEN_FILE.is_file(), "record it with: python tests/golden.py --record"


@pytest.mark.parametrize("case", sorted(RECORD))
def test_outputs_equal_the_golden_record(now, case):
    if case not in now:
        pytest.skip(f"{case} needs ../shared/data/goemotions")
    found = differences(now[case], RECORD[case], f"/{case}")
    shown = "\n".join(found[:40]) + (f"\n... and {len(found) - 40} more" if len(found) > 40 else "")
    assert not found, f"{len(found)} difference(s) from tests/golden/golden.json:\n{shown}"


# --------------------------------------------------------------------------- the comparison itself


def _edited(case: str, edit) -> dict:
    """A deep copy of one recorded case with `edit` applied to it."""
    out = copy.deepcopy(RECORD[case])
    edit(out)
    return out


def _scale_every_float(value, factor: float):
    if isinstance(value, dict):
        return {k: _scale_every_float(v, factor) for k, v in value.items()}
    if isinstance(value, list):
        return [_scale_every_float(v, factor) for v in value]
    return value * factor if isinstance(value, float) else value


needs_record = pytest.mark.skipif(not RECORD, reason="no golden record")


@needs_record
def test_the_record_equals_itself():
    assert all(differences(copy.deepcopy(RECORD[c]), RECORD[c]) == [] for c in RECORD)


@needs_record
def test_rounding_a_1e7_relative_change_in_every_float_passes():
    for case in RECORD:
        assert differences(_scale_every_float(RECORD[case], 1 + 1e-7), RECORD[case]) == [], case
        assert differences(_scale_every_float(RECORD[case], 1 - 2.7e-7), RECORD[case]) == [], case


@needs_record
def test_a_1e3_relative_change_fails_and_names_the_path_and_size():
    now = _edited("default_tiny", lambda m: m["best_val"].__setitem__("loss", m["best_val"]["loss"] * 1.001))
    assert differences(now, RECORD["default_tiny"], "/default_tiny") == [
        f"/default_tiny/best_val/loss: {RECORD['default_tiny']['best_val']['loss']!r} in the record, "
        f"{now['best_val']['loss']!r} now (relative difference 0.001, tolerance {REL_TOL:g})"
    ]


@needs_record
def test_a_flipped_label_fails():
    def flip(preds):
        preds[0]["label"] = "joy" if preds[0]["label"] != "joy" else "anger"

    found = differences(_edited("bundle_predictions", flip), RECORD["bundle_predictions"])
    assert len(found) == 1 and found[0].startswith("[0]/label: ")


@needs_record
def test_a_changed_best_epoch_fails_even_as_an_integer_off_by_one():
    epoch = RECORD["default_tiny"]["best_epoch"]
    found = differences(
        _edited("default_tiny", lambda m: m.__setitem__("best_epoch", epoch + 1)), RECORD["default_tiny"]
    )
    assert found == [f"/best_epoch: {epoch} in the record, {epoch + 1} now"]


@needs_record
def test_a_missing_or_an_extra_key_fails():
    missing = differences(_edited("default_tiny", lambda m: m.pop("status")), RECORD["default_tiny"])
    assert missing == [f'/status: missing now (recorded: "{RECORD["default_tiny"]["status"]}")']
    extra = differences(_edited("default_tiny", lambda m: m.__setitem__("new_key", 1)), RECORD["default_tiny"])
    assert extra == ["/new_key: not in the record (now: 1)"]


@needs_record
def test_a_changed_decision_status_or_count_fails():
    golden = RECORD["goemotions_tuned"] if "goemotions_tuned" in RECORD else RECORD["default_tiny"]
    for edit in (
        lambda m: m["decisions"].__setitem__(
            "policy", "threshold" if m["decisions"]["policy"] != "threshold" else "argmax"
        ),
        lambda m: m.__setitem__("status", "failed"),
        lambda m: m["data_sizes"].__setitem__("train", m["data_sizes"]["train"] + 1),
        lambda m: m.__setitem__("history", m["history"][:-1]),
    ):
        now = copy.deepcopy(golden)
        edit(now)
        assert len(differences(now, golden)) == 1


def test_types_must_match_exactly():
    assert differences({"a": 1}, {"a": 1.0}) == ["/a: float 1.0 in the record, int 1 now"]
    assert differences({"a": True}, {"a": 1}) == ["/a: int 1 in the record, bool true now"]
    assert differences([None], [0.0]) == ["[0]: float 0.0 in the record, NoneType null now"]


def test_floats_near_zero_use_the_absolute_floor_and_non_finite_values_match_only_themselves():
    assert differences(3.1e-12, 3e-12) == []  # 3% relative, but far below ABS_TOL
    assert differences(ABS_TOL * 10, 0.0) != []
    assert differences(float("nan"), float("nan")) == []
    assert differences(float("inf"), float("inf")) == []
    assert differences(float("nan"), 0.5) != [] and differences(0.5, float("nan")) != []
    assert differences(float("inf"), 1e300) != [] and differences(float("-inf"), float("inf")) != []
