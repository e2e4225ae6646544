"""Property: any change log exports to the same bytes whatever the batch size, and CSV/JSONL
carry exactly the Parquet rows (decimals and timestamps included)."""

from __future__ import annotations

import datetime as dt
import io
import json
import tempfile
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings, replace
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file
from subscription_export.runtime import Project
from subscription_export.source.demo_table import init_demo_source


# Characters that break naive CSV/JSON writers come up often, the rest of Unicode too. Control
# characters send a whole column down the JSON writer's slow path, so half the examples have none.
def _text(controls: bool) -> st.SearchStrategy[str]:
    special = "\"\\,;' é€😀=+-@" + ("\n\r\t\x00\x1f" if controls else "")
    exclude = ("Cs",) if controls else ("Cs", "Cc")
    return st.text(
        alphabet=st.one_of(
            st.sampled_from(special), st.characters(codec="utf-8", exclude_categories=exclude)
        ),
        max_size=12,
    )


_amount = st.decimals(min_value=0, max_value=Decimal("99999999.9999"), places=4)
_moment = st.datetimes(
    min_value=dt.datetime(1990, 1, 1), max_value=dt.datetime(2090, 1, 1), timezones=st.just(dt.UTC)
)
_ops = st.booleans().flatmap(
    lambda controls: st.lists(
        st.tuples(
            st.sampled_from(["c", "u", "d"]), st.integers(0, 4), _text(controls), _amount, _moment
        ),
        min_size=5,
        max_size=40,
    )
)

_INSERT = sa.text(
    "INSERT INTO subscriptions (id, user_id, name, category, amount, currency,"
    " billing_cycle, status, next_billing_date, timezone, created_at, updated_at, version)"
    " VALUES (:id, 'u', :name, :name, :amount, 'EUR', 'monthly', 'active', '2026-03-08',"
    " 'America/New_York', :ts, :ts, 1)"
    " ON CONFLICT (id) DO UPDATE SET name = excluded.name, amount = excluded.amount"
)
_UPDATE = sa.text(
    "UPDATE subscriptions SET name = :name, amount = :amount, updated_at = :ts,"
    " version = version + 1 WHERE id = :id"
)
_DELETE = sa.text("DELETE FROM subscriptions WHERE id = :id")


def _write(url: str, ops: list[tuple[str, int, str, Decimal, dt.datetime]]) -> None:
    engine = engine_for(url, writer=True)
    init_demo_source(engine)
    with engine.begin() as conn:
        for op, n, name, amount, moment in ops:
            params = {"id": f"s{n}", "name": name, "amount": str(amount), "ts": moment.isoformat()}
            conn.execute({"c": _INSERT, "u": _UPDATE, "d": _DELETE}[op], params)


def _export(project: Project, window) -> dict[str, Path]:  # type: ignore[no-untyped-def]
    return {
        fmt: export_window_file(project, fmt, window)[0].path for fmt in ("parquet", "csv", "jsonl")
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=_ops,
    batch_a=st.integers(1, 50),
    batch_b=st.integers(1, 50),
)
def test_same_window_same_bytes_and_formats_agree(ops, batch_a: int, batch_b: int) -> None:  # type: ignore[no-untyped-def]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        url = f"sqlite:///{root / 'source.db'}"
        _write(
            url,
            [("c", n, "x", Decimal(1), dt.datetime(2026, 1, 1, tzinfo=dt.UTC)) for n in range(5)]
            + ops,
        )
        base = Settings(
            source_url=url,
            state_url=f"sqlite:///{root / 'state.db'}",
            export_dir=root / "a",
            window_max_changes=10_000,
            window_max_age_s=0.0,
            read_batch_size=batch_a,
        )
        project_a = Project(base)
        window = cut_windows(project_a).new_windows[0]
        first = _export(project_a, window)
        second = _export(
            Project(replace(base, export_dir=root / "b", read_batch_size=batch_b)), window
        )
        for fmt in first:
            assert first[fmt].read_bytes() == second[fmt].read_bytes(), fmt

        table = pq.read_table(first["parquet"])
        expected = table.to_pylist()
        assert _read_jsonl(first["jsonl"], table.schema) == expected
        # CSV neutralizes spreadsheet formulas by default (`csv_neutralize_formulas`).
        assert _read_csv(first["csv"], table.schema) == [
            _formula_neutralized(row, table.schema) for row in expected
        ]
        engine_for.cache_clear()


def _formula_neutralized(row: dict, schema: pa.Schema) -> dict:
    """The row as CSV shows it: text starting with = + - @ tab or CR gets a leading '."""
    return {
        f.name: "'" + v
        if pa.types.is_string(f.type)
        and isinstance(v, str)
        and v[:1] in ("=", "+", "-", "@", "\t", "\r")
        else v
        for f, v in zip(schema, row.values(), strict=True)
    }


def _typed(value: object, arrow_type: pa.DataType) -> object:
    if value is None:
        return None
    if pa.types.is_timestamp(arrow_type):
        return dt.datetime.fromisoformat(str(value))
    if pa.types.is_decimal(arrow_type):
        return Decimal(str(value))
    if pa.types.is_date(arrow_type):
        return dt.date.fromisoformat(str(value))
    if pa.types.is_boolean(arrow_type):
        return value if isinstance(value, bool) else value == "true"
    if pa.types.is_integer(arrow_type):
        return int(value)  # type: ignore[call-overload]
    return value


def _read_jsonl(path: Path, schema: pa.Schema) -> list[dict]:
    rows = []
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
        obj = json.loads(line)
        assert list(obj) == schema.names  # keys in column order
        rows.append({f.name: _typed(obj[f.name], f.type) for f in schema})
    return rows


def _read_csv(path: Path, schema: pa.Schema) -> list[dict]:
    data = path.read_bytes()
    assert data.endswith(b"\r\n")
    table = pacsv.read_csv(
        io.BytesIO(data),
        convert_options=pacsv.ConvertOptions(
            column_types={f.name: pa.string() for f in schema},
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,  # "" is an empty string, an empty field is NULL
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
    )
    return [{f.name: _typed(row[f.name], f.type) for f in schema} for row in table.to_pylist()]
