"""Issue 12 (6): arbitrary JSON and text in every column, written as a hostile app would, never
crash or block a window. Every LSN ends in the file or in the quarantine, and a value that
converts is exported exactly as converted (the fast path and the row path agree)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from subscription_export.core.columns import BASE_COLUMNS, BASE_TYPES
from subscription_export.core.currencies import ISO_4217
from subscription_export.core.domains import check_domain
from subscription_export.core.settings import Settings, replace
from subscription_export.core.timezones import IANA_ZONES
from subscription_export.core.values import BadValue, convert
from subscription_export.runtime import Project
from subscription_export_tests.export.hostile_writes import (
    Exported,
    append_image,
    export_new_windows,
    last_image,
    with_json_value,
)
from subscription_export_tests.helpers import insert, writer

UTC = dt.UTC
NAMES = [c.name for c in BASE_COLUMNS]


def _text(postgres: bool, max_size: int = 12) -> st.SearchStrategy[str]:
    # jsonb refuses \u0000 and lone surrogates at write time, in keys as in values; SQLite
    # keeps them.
    if postgres:
        return st.text(
            st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
            max_size=max_size,
        )
    return st.text(st.characters(exclude_categories=[]), max_size=max_size)  # surrogates too


def _key(postgres: bool) -> st.SearchStrategy[str]:
    """A key of a JSON object inside a value: jsonb refuses \u0000 there too."""
    return _text(postgres, 3) if postgres else st.text(max_size=3)


def _good(column: str, postgres: bool) -> st.SearchStrategy[str]:
    """JSON text of a value that must be exported unchanged."""
    kind = BASE_TYPES[column]
    if column == "currency":
        return st.sampled_from(sorted(ISO_4217)).map(json.dumps)
    if column == "timezone":
        return st.sampled_from(sorted(IANA_ZONES)).map(json.dumps)
    if kind == "text":
        return st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), max_size=12).map(
            json.dumps
        )
    if kind == "integer":
        return st.integers(-(2**63), 2**63 - 1).map(str)
    if kind == "decimal":
        decimals = st.decimals(-(10**14) + 1, 10**14 - 1, places=4)
        return st.one_of(decimals.map(str), decimals.map(lambda d: json.dumps(str(d))))
    if kind == "date":
        return st.dates().map(lambda d: json.dumps(d.isoformat()))
    moments = st.datetimes(timezones=st.just(UTC))
    return moments.map(lambda m: json.dumps(m.strftime("%Y-%m-%dT%H:%M:%S.%fZ")))


def _hostile(postgres: bool) -> st.SearchStrategy[str]:
    """JSON text of anything: numbers of any size and form, text, near-ISO text, containers."""
    numbers = st.from_regex(
        r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,8})?([eE][-+]?[0-9]{1,3})?", fullmatch=True
    )
    near_iso = st.from_regex(
        r"[0-9]{1,5}-[0-9]{1,2}-[0-9]{1,2}([T ][0-9]{1,2}(:[0-9]{2}){0,2}(\.[0-9]{1,9})?)?"
        r"(Z|[+-][0-9]{2}(:?[0-9]{2})?)?",
        fullmatch=True,
    )
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False)
    )
    values = st.recursive(
        st.one_of(scalars, _text(postgres)),
        lambda inner: (
            st.lists(inner, max_size=2) | st.dictionaries(_key(postgres), inner, max_size=2)
        ),
        max_leaves=4,
    )
    as_text = st.one_of(numbers, near_iso, _text(postgres)).map(json.dumps)
    return st.one_of(numbers, as_text, values.map(json.dumps))


def _changes(postgres: bool) -> st.SearchStrategy[list[tuple[str, str]]]:
    change = st.sampled_from(NAMES).flatmap(
        lambda c: st.tuples(st.just(c), st.one_of(_good(c, postgres), _hostile(postgres)))
    )
    return st.lists(change, min_size=1, max_size=6)


def _expected(image_text: str | None) -> list[object] | None:
    """The converted row the export must hold, or None if it must be quarantined."""
    try:
        image = json.loads(image_text, parse_float=Decimal) if image_text else None
        if not isinstance(image, dict):
            return None
        values = [convert(image.get(c.name), c.type) for c in BASE_COLUMNS]
        for name, value in zip(NAMES, values, strict=True):
            check_domain(name, value)
    except (BadValue, ValueError, RecursionError):
        return None
    return values


def _stored_images(conn: sa.Connection, lo: int, hi: int) -> dict[int, str | None]:
    image = "after::text" if conn.dialect.name == "postgresql" else "CAST(after AS BLOB)"
    rows = conn.execute(
        sa.text(f"SELECT lsn, {image} FROM subscription_change_log WHERE lsn BETWEEN :lo AND :hi"),
        {"lo": lo, "hi": hi},
    ).all()
    decoded = {}
    for lsn, raw in rows:
        try:
            decoded[lsn] = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            decoded[lsn] = None
    return decoded


def _check(window: Exported, images: dict[int, str | None]) -> None:
    lo, hi = window.outcome.window.lo, window.outcome.window.hi
    assert window.rows.keys() | window.quarantined.keys() == set(range(lo, hi + 1))
    assert not window.rows.keys() & window.quarantined.keys()
    for lsn in range(lo, hi + 1):
        expected = _expected(images[lsn])
        if expected is None:
            assert lsn in window.quarantined, f"LSN {lsn} exported: {images[lsn]!r}"
            continue
        assert lsn in window.rows, f"LSN {lsn} quarantined: {window.quarantined.get(lsn)}"
        got = [window.rows[lsn][name] for name in NAMES]
        assert got == expected, f"LSN {lsn}: {images[lsn]!r}"


def _run_property(settings: Settings) -> None:
    postgres = settings.source_url.startswith("postgresql")
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "s")
        base = last_image(conn, "s")
    project = Project(replace(settings, read_batch_size=3))
    export_new_windows(project)  # the insert's window: examples start on a clean slate

    @hypothesis_settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(_changes(postgres))
    def property_(changes: list[tuple[str, str]]) -> None:
        with engine.begin() as conn:
            for column, json_text in changes:
                append_image(conn, "s", with_json_value(base, column, json_text))
        [window] = export_new_windows(project)
        with engine.connect() as conn:
            images = _stored_images(conn, window.outcome.window.lo, window.outcome.window.hi)
        _check(window, images)

    property_()


def test_any_value_in_any_column_is_exported_or_quarantined(settings: Settings) -> None:
    _run_property(settings)


@pytest.mark.parametrize("column", ["name", "version", "amount", "updated_at"])
def test_values_written_into_sqlite_rows_are_exported_or_quarantined(
    settings: Settings, column: str
) -> None:
    """SQLite keeps whatever an UPDATE binds (its columns only have affinities)."""
    if settings.source_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's typed columns refuse these at write time")
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "s")
    project = Project(replace(settings, read_batch_size=3))
    export_new_windows(project)

    @hypothesis_settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.lists(
            st.one_of(
                st.text(),
                st.integers(-(2**63), 2**63 - 1),
                st.floats(allow_nan=False),
                st.decimals().map(str),
            ),
            min_size=1,
            max_size=4,
        )
    )
    def property_(values: list[object]) -> None:
        with engine.begin() as conn:
            for value in values:
                conn.execute(
                    sa.text(f"UPDATE subscriptions SET {column} = :v WHERE id = 's'"), {"v": value}
                )
        [window] = export_new_windows(project)
        with engine.connect() as conn:
            images = _stored_images(conn, window.outcome.window.lo, window.outcome.window.hi)
        _check(window, images)

    property_()
