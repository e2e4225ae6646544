"""The demo's files are byte-identical to those of the release before issue 13 (any table,
any key): the hashes below were produced by main at b445cd2 with scripts/demo_bytes.py, on
SQLite and PostgreSQL alike."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_SCRIPT = Path(__file__).parents[2] / "scripts" / "demo_bytes.py"
_WINDOW = "00000000000000000001-00000000000000000270"
BEFORE_ISSUE_13 = {
    f"{_WINDOW}.csv": "093b1c5852b96c136923b43d16d1901ebe6eae8d988378821382094ff08b1900",
    f"{_WINDOW}.jsonl": "43d28018c6cb5dc10595d4b285ca963af1e1c066f4ef7dad69252581dbe182ca",
    f"{_WINDOW}.parquet": "7de18b6100445afa42e41abad57590d966af15d8be707bd83bcf1202bcabcc3a",
}


def test_demo_window_bytes_are_unchanged(source_url: str, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("demo_bytes", _SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(source_url, tmp_path) == BEFORE_ISSUE_13
