"""Reorganising the code must not change what it computes: the golden matrix (tests/golden.py) against its record."""

from __future__ import annotations

import json

import pytest

from golden import GOLDEN_FILE, compute


@pytest.fixture(scope="module")
def now(tmp_path_factory):
    return compute(tmp_path_factory.mktemp("golden"))


def test_golden_record_exists():
    assert GOLDEN_FILE.is_file(), "record it with: python tests/golden.py --record"


@pytest.mark.parametrize("case", sorted(json.loads(GOLDEN_FILE.read_text())) if GOLDEN_FILE.is_file() else [])
def test_outputs_equal_the_golden_record(now, case):
    golden = json.loads(GOLDEN_FILE.read_text())[case]
    if case not in now:
        pytest.skip(f"{case} needs ../shared/data/goemotions")
    assert now[case] == golden  # exact: deterministic runs, same arithmetic
