"""Issue 15: the scan for changes a later capture version adopts (a server-side jsonb_each of
every image) runs only over changes of an older version than the newest registered one."""

from __future__ import annotations

from typing import Any

import pytest

from subscription_export.core.columns import BASE_COLUMNS, SourceColumn
from subscription_export.export import adoption

_V2 = (*BASE_COLUMNS, SourceColumn("seats", "integer"))


def _scanned(monkeypatch: pytest.MonkeyPatch) -> list[dict[int, frozenset[str]]]:
    calls: list[dict[int, frozenset[str]]] = []

    def record(_source: Any, _lo: int, _hi: int, captured: dict[int, frozenset[str]], _t: Any):  # type: ignore[no-untyped-def]
        calls.append(captured)
        return {}

    monkeypatch.setattr(adoption, "uncaptured_keys", record)
    return calls


def test_a_window_of_the_newest_version_only_is_not_scanned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _scanned(monkeypatch)
    capture = {1: BASE_COLUMNS, 2: _V2}
    assert adoption.newest_version(None, 1, 9, capture, {2: 1}, ()) == (2, 1)  # type: ignore[arg-type]
    assert adoption.newest_version(None, 1, 9, {1: BASE_COLUMNS}, {1: 1}, ()) == (1, 1)  # type: ignore[arg-type]
    assert calls == []


def test_only_older_versions_present_are_scanned(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _scanned(monkeypatch)
    capture = {1: BASE_COLUMNS, 2: _V2, 3: _V2}
    adoption.newest_version(None, 1, 9, capture, {1: 1, 3: 5}, ())  # type: ignore[arg-type]
    assert [sorted(c) for c in calls] == [[1]]
