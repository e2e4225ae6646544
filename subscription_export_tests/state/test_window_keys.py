"""Window keys have one format (`{lo:020d}-{hi:020d}`) and one parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from subscription_export.core.errors import RangeError
from subscription_export.state.windows import Window, parse_window_key, window_key

LSNS = st.integers(min_value=1, max_value=10**20 - 1)


@given(LSNS, LSNS)
def test_a_key_parses_back_to_its_range_and_sorts_as_numbers(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    key = window_key(lo, hi)

    assert parse_window_key(key) == (lo, hi)
    assert Window(lo, hi).key == key
    assert (key < window_key(hi + 1, hi + 1)) if hi + 1 < 10**20 else True


@pytest.mark.parametrize(
    "key",
    [
        "1-5",  # not zero-padded
        "00000000000000000001_0-00000000000000000005",  # int() accepts underscores
        "+0000000000000000001-00000000000000000005",  # and signs
        " 00000000000000000001-00000000000000000005",  # and spaces
        "00000000000000000001-00000000000000000005-00000000000000000009",
        "2026-11-01",
        "",
    ],
)
def test_a_malformed_key_is_refused_with_the_expected_format(key: str) -> None:
    expected = r"is not a window key \(expected FROM-TO, 20 digits each\)"
    with pytest.raises(RangeError, match=expected):
        parse_window_key(key)


@pytest.mark.parametrize("lo, hi", [(0, 5), (5, 4)])
def test_an_empty_window_or_one_below_lsn_1_is_refused(lo: int, hi: int) -> None:
    with pytest.raises(RangeError, match="is empty or starts below LSN 1"):
        parse_window_key(f"{lo:020d}-{hi:020d}")
