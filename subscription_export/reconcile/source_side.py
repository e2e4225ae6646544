"""The source side of a reconcile (I/O on the source database): typed values, the current row
and its change-log history, and the write-back (tagged with the system as origin).
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.core.columns import BASE_TYPES, LogicalType
from subscription_export.core.db import engine_for, normalize_url
from subscription_export.core.values import BadValue, convert
from subscription_export.delivery.columns import ColumnMap, project_columns
from subscription_export.delivery.config import DestinationConfig
from subscription_export.delivery.mapping import MappingError
from subscription_export.reconcile.strategies import MISSING, SOURCE, same

# LocalState and Origin are imported here for this module's use and so that pickled op outputs
# of earlier releases (which named them `source_side.LocalState`/`.Origin`) still load.
from subscription_export.reconcile.three_way import (
    APP_ORIGIN,
    EPOCH,
    LocalState,
    Origin,
    as_time,
    system_of,
    version_of,
)
from subscription_export.runtime import Project
from subscription_export.source.schema import latest_capture_schema, origin_tagged

# -- values ------------------------------------------------------------------------------------

Types = Mapping[str, LogicalType]


class TableTypes(dict[str, LogicalType]):
    """Field -> logical type of the records a reconcile compares, with the `ColumnMap` that
    ties the fields to the columns of the table written back (the destination's `table` and
    `columns`). Reconcile works in field names; only this module's SQL speaks columns."""

    def __init__(self, types: Mapping[str, LogicalType], columns: ColumnMap) -> None:
        super().__init__(types)
        self.columns = columns


def column_types(conn: Connection, columns: ColumnMap | None = None) -> TableTypes:
    """The fields and their logical types: the destination's (`columns`), else the demo
    table's columns as their own fields (base columns plus added ones)."""
    if columns is not None:
        return TableTypes(columns.field_types, columns)
    schema = latest_capture_schema(conn, "subscriptions")
    types = dict(BASE_TYPES) if schema is None else {c.name: c.type for c in schema.columns}
    return TableTypes(types, ColumnMap("subscriptions", "id", types, {n: n for n in types}))


def destination_types(project: Project, config: DestinationConfig) -> TableTypes:
    """The types of `config`'s records, bound to its table (a mapping mistake stops here)."""
    columns = project_columns(project, config)
    return TableTypes(columns.field_types, columns)


def columns_of(types: Types) -> ColumnMap:
    """The table and column mapping `types` were bound to (the demo table's identity map for
    plain types)."""
    if isinstance(types, TableTypes):
        return types.columns
    return ColumnMap("subscriptions", "id", dict(types), {n: n for n in types})


def version_column(types: Types) -> str:
    """The table's column that feeds the `version` field (what a change-log image's version
    is read from)."""
    return columns_of(types).fields.get("version", "version")


def as_fields(logged: dict[str, Any] | None, types: Types) -> dict[str, Any] | None:
    """A change-log image (the table's columns) as a record of fields."""
    return None if logged is None else columns_of(types).to_fields(logged)


def normalize(
    record: Mapping[str, Any] | None, types: Types, *, strict: bool = False
) -> dict[str, Any] | None:
    """Keep the source's columns, each as its Python type (exact decimals at scale 4, dates,
    UTC datetimes), so values from SQLite, PostgreSQL and JSON compare equal.

    `strict` (a remote's record): a value that does not convert is a `MappingError` naming the
    field, so the change is `invalid` instead of carrying a bad value into the merge. Otherwise
    (images we stored ourselves) such a value is kept as it is."""
    if record is None:
        return None
    out: dict[str, Any] = {}
    for name, value in record.items():
        logical = types.get(name)
        if logical is None:
            continue
        try:
            out[name] = convert(value, logical)
        except BadValue as exc:
            if strict:
                raise MappingError(f"{_field_named(name, types)}: {exc}") from None
            out[name] = value
    return out


def _field_named(name: str, types: Types) -> str:
    """A field in a message, with the column it is written to when that is another name."""
    column = columns_of(types).fields.get(name, name)
    return f"field {name!r}" + (f" (column {column!r})" if column != name else "")


# -- the source side ---------------------------------------------------------------------------


def same_database(project: Project) -> bool:
    """True when the state tables live in the source database (one transaction for both)."""
    settings = project.settings
    return normalize_url(settings.source_url).render_as_string(
        hide_password=False
    ) == normalize_url(settings.state_url).render_as_string(hide_password=False)


def source_writer(project: Project) -> Engine:
    project.source  # noqa: B018 - checks reachability and the capture schema once
    return engine_for(project.settings.source_url, writer=True)


@dataclass(frozen=True)
class LogImage:
    id: int
    op: str
    origin: str
    record: dict[str, Any] | None  # after-image, None for a delete
    version: int | None


_LAST_ROW = sa.text(
    "SELECT id, op, origin, CAST(before AS TEXT) AS before, changed_at"
    " FROM subscription_change_log WHERE subscription_id = :s AND source_table = :t"
    " ORDER BY id DESC LIMIT 1"
)


def json_image(text: str | None) -> dict[str, Any] | None:
    return None if text is None else json.loads(text, parse_float=Decimal)


def read_local(conn: Connection, subscription_id: str, types: Types, lock: bool) -> LocalState:
    """The current row; with `lock`, held until the transaction ends (PostgreSQL: a per-id
    advisory lock too, so two systems cannot resurrect the same deleted id at once)."""
    postgres = conn.dialect.name == "postgresql"
    if lock and postgres:
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"sync:{subscription_id}"}
        )
    columns = columns_of(types)
    table = sa.table(columns.table, sa.column(columns.key))
    key = db_value(columns.key_value(subscription_id), postgres)
    query = sa.select(sa.text("*")).select_from(table).where(table.c[columns.key] == key)
    if lock and postgres:
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    last = conn.execute(_LAST_ROW, {"s": subscription_id, "t": columns.table}).first()
    last_time = as_time(last.changed_at, EPOCH) if last else EPOCH
    if row is not None:
        record = normalize(columns.to_fields(dict(row)), types)
        assert record is not None
        return LocalState(
            record,
            as_time(record.get("updated_at"), last_time),
            version_of(record) or 0,
            int(last.id) if last else 0,
            last.origin if last else APP_ORIGIN,
        )
    before = (
        as_fields(json_image(last.before), types) if last is not None and last.op == "d" else None
    )
    return LocalState(
        None,
        last_time,
        version_of(before) or 0,
        int(last.id) if last else 0,
        last.origin if last else APP_ORIGIN,
    )


def image(row: Any, types: Types) -> LogImage:
    after = normalize(as_fields(json_image(row.after), types), types)
    before = as_fields(json_image(getattr(row, "before", None)), types)
    version = version_of(after) if after is not None else version_of(before)
    return LogImage(int(row.id), row.op, row.origin, after, version)


def image_by_version(
    conn: Connection, subscription_id: str, version: int, types: Types
) -> LogImage | None:
    """The newest change-log image of the subscription with this `version`."""
    column = version_column(types)  # bound, not string-built
    postgres = conn.dialect.name == "postgresql"
    match = "(after->>:c)::bigint = :v" if postgres else "json_extract(after, :c) = :v"
    path = column if postgres else '$."' + column.replace('"', '\\"') + '"'
    row = conn.execute(
        sa.text(
            "SELECT id, op, origin, CAST(after AS TEXT) AS after FROM subscription_change_log"
            f" WHERE subscription_id = :s AND source_table = :t AND after IS NOT NULL AND {match}"
            " ORDER BY id DESC LIMIT 1"
        ),
        {"s": subscription_id, "t": columns_of(types).table, "v": version, "c": path},
    ).first()
    return image(row, types) if row else None


def changed_after(
    conn: Connection,
    subscription_id: str,
    after_id: int,
    system: str,
    types: Types,
    watermark: int | None = None,
) -> LogImage | None:
    """The newest change after `after_id` that the window delivery sends to `system` (all but
    the system's own write-backs); with `watermark`, only one it has sent already."""
    sent = "" if watermark is None else " AND lsn IS NOT NULL AND lsn <= :w"
    row = conn.execute(
        sa.text(
            "SELECT id, op, origin, CAST(after AS TEXT) AS after, CAST(before AS TEXT) AS before"
            " FROM subscription_change_log WHERE subscription_id = :s AND source_table = :t"
            f" AND id > :a AND origin <> :o{sent} ORDER BY id DESC LIMIT 1"
        ),
        {"s": subscription_id, "t": columns_of(types).table, "a": after_id, "o": system}
        | ({} if watermark is None else {"w": watermark}),
    ).first()
    return image(row, types) if row else None


def field_times(
    conn: Connection,
    subscription_id: str,
    fields: Sequence[str],
    default: dt.datetime,
    types: Types,
) -> dict[str, Origin]:
    """For each field: the origin and business time (`updated_at`) of the newest change that
    set it, from the change log (exact for app edits, whose updated_at the app sets). Values
    are compared typed: a write-back stores `12.0000` where the app wrote `12.00`."""
    rows = conn.execute(
        sa.text(
            "SELECT op, origin, CAST(before AS TEXT) AS before, CAST(after AS TEXT) AS after,"
            " changed_at FROM subscription_change_log WHERE subscription_id = :s"
            " AND source_table = :t ORDER BY id DESC LIMIT 1000"
        ),
        {"s": subscription_id, "t": columns_of(types).table},
    ).all()
    found, todo = fields_set_by(rows, fields, default, types)
    return found | {name: Origin(SOURCE, default) for name in todo}


def fields_set_by(
    rows: Sequence[Any], fields: Sequence[str], default: dt.datetime, types: Types
) -> tuple[dict[str, Origin], set[str]]:
    """Of change-log rows (newest first), the origin of the newest change that set each field;
    and the fields none of them set."""
    found: dict[str, Origin] = {}
    todo = set(fields)
    for row in rows:
        if not todo:
            break
        if row.op == "d":
            continue
        before = normalize(as_fields(json_image(row.before), types), types) or {}
        after = normalize(as_fields(json_image(row.after), types), types) or {}
        at = as_time(after.get("updated_at"), as_time(row.changed_at, default))
        for name in sorted(todo):
            if row.op == "c" or not same(before.get(name, MISSING), after.get(name, MISSING)):
                found[name] = Origin(system_of(row.origin), at)
                todo.discard(name)
    return found, todo


def db_value(value: Any, postgres: bool) -> Any:
    """A Python value as the source stores it (SQLite: exact decimals and ISO times as text)."""
    if value is None or postgres:
        return value
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def write_local(
    conn: Connection,
    subscription_id: str,
    target: Mapping[str, Any] | None,
    exists: bool,
    types: Types,
    origin: str,
) -> int:
    """Make the source row equal `target` (None: delete), tagged with `origin` in the change
    log; returns the subscription's newest change-log id (the write-back's own row)."""
    postgres = conn.dialect.name == "postgresql"
    columns = columns_of(types)
    # the key's own type: an integer key as an int, a uuid as a UUID (text on SQLite)
    key = db_value(columns.key_value(subscription_id), postgres)
    with origin_tagged(conn, origin):
        fields = {n: db_value(target[n], postgres) for n in types if n in (target or {})}
        values = columns.to_columns({n: v for n, v in fields.items() if n != "id"})
        # Column names come from the catalog: SQLAlchemy quotes them, never string-built.
        table = sa.table(columns.table, sa.column(columns.key), *map(sa.column, values))
        where = table.c[columns.key] == key
        if target is None:
            conn.execute(sa.delete(table).where(where))
        elif exists:
            conn.execute(sa.update(table).where(where).values(values))
        else:
            conn.execute(sa.insert(table).values({columns.key: key, **values}))
    newest = conn.execute(
        sa.text(
            "SELECT MAX(id) FROM subscription_change_log"
            " WHERE subscription_id = :s AND source_table = :t"
        ),
        {"s": subscription_id, "t": columns.table},
    ).scalar()
    return int(newest or 0)
