"""The source side of a whole feed batch, set-based (issue 15): the current rows and the recent
change-log history of every subscription of a batch in one query each, locked in one statement
per kind, and the write-backs of a batch in one statement per kind of write.

`source_side` keeps the per-record queries; `reads.BatchReads` answers from what is loaded here
and falls back to them for a subscription whose history is longer than was loaded.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from subscription_export.delivery.columns import ColumnMap
from subscription_export.reconcile.source_side import (
    Types,
    as_fields,
    columns_of,
    db_value,
    json_image,
    normalize,
)
from subscription_export.reconcile.three_way import (
    APP_ORIGIN,
    EPOCH,
    LocalState,
    as_time,
    version_of,
)
from subscription_export.source.schema import origin_tagged

HISTORY_DEPTH = 64
"""Change-log rows loaded per subscription (newest first). Deciding an edit almost always needs
only the last few; a deeper look falls back to the per-record query."""


@dataclass(frozen=True)
class LogRow:
    """One change-log row as `source_side.image` reads it (JSON images as text)."""

    id: int
    op: str
    origin: str
    before: str | None
    after: str | None
    changed_at: Any


@dataclass(frozen=True)
class History:
    """A subscription's newest change-log rows, newest first."""

    rows: tuple[LogRow, ...]
    complete: bool  # every row of the subscription is here

    def covers_after(self, log_id: int) -> bool:
        """Whether every row with an id above `log_id` is here."""
        return self.complete or (bool(self.rows) and self.rows[-1].id <= log_id)


def _ids(idents: Collection[str]) -> dict[str, Any]:
    return {"ids": sorted(idents)}


_HISTORY = sa.text(
    "SELECT id, subscription_id, op, origin, CAST(before AS TEXT) AS before,"
    " CAST(after AS TEXT) AS after, changed_at FROM ("
    " SELECT id, subscription_id, op, origin, before, after, changed_at, ROW_NUMBER() OVER"
    " (PARTITION BY subscription_id ORDER BY id DESC) AS newest"
    " FROM subscription_change_log WHERE subscription_id IN :ids AND source_table = :t)"
    " AS recent"
    " WHERE newest <= :depth ORDER BY subscription_id, id DESC"
).bindparams(sa.bindparam("ids", expanding=True))


def read_histories(
    conn: Connection, idents: Collection[str], table: str, depth: int = HISTORY_DEPTH
) -> dict[str, History]:
    """The newest `depth` change-log rows of each subscription of `table`, in one query."""
    found: dict[str, list[LogRow]] = defaultdict(list)
    if idents:
        for r in conn.execute(_HISTORY, {**_ids(idents), "t": table, "depth": depth}):
            row = LogRow(int(r.id), r.op, r.origin, r.before, r.after, r.changed_at)
            found[r.subscription_id].append(row)
    return {
        ident: History(tuple(found.get(ident, ())), len(found.get(ident, ())) < depth)
        for ident in idents
    }


def lock_subscriptions(conn: Connection, idents: Collection[str]) -> None:
    """PostgreSQL: the per-id advisory locks `source_side.read_local` takes, for all ids in one
    statement and in one order (two batches sharing ids cannot deadlock on them)."""
    if conn.dialect.name != "postgresql" or not idents:
        return
    keys = sorted(f"sync:{ident}" for ident in idents)
    conn.execute(
        sa.text(
            "SELECT pg_advisory_xact_lock(hashtext(k)) FROM"
            " (SELECT k FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k) AS ordered"
        ),
        {"keys": keys},
    )


def _keys(columns: ColumnMap, idents: Collection[str], postgres: bool) -> list[Any]:
    """Canonical ids as the key column's values (an int, a UUID on PostgreSQL), as
    `source_side.write_local` binds one."""
    return [db_value(columns.key_value(ident), postgres) for ident in sorted(idents)]


def read_rows(
    conn: Connection, idents: Collection[str], types: Types, *, lock: bool
) -> dict[str, dict[str, Any]]:
    """The current rows of these ids in the destination's table, as records of fields keyed by
    canonical id, in one query (PostgreSQL with `lock`: locked in key order, after
    `lock_subscriptions`; read before their history, so no change of theirs can commit in
    between, as in `source_side.read_local`)."""
    if not idents:
        return {}
    postgres = conn.dialect.name == "postgresql"
    columns = columns_of(types)
    table = sa.table(columns.table, sa.column(columns.key))
    key = table.c[columns.key]
    query = (
        sa.select(sa.text("*")).select_from(table).where(key.in_(_keys(columns, idents, postgres)))
    )
    if lock and postgres:
        query = query.order_by(key).with_for_update()
    found = (columns.to_fields(dict(r)) for r in conn.execute(query).mappings())
    return {record["id"]: record for record in found}


def locals_of(
    idents: Collection[str],
    rows: Mapping[str, dict[str, Any]],
    histories: Mapping[str, History],
    types: Types,
) -> dict[str, LocalState]:
    """`source_side.read_local` of every id, from `read_rows` and `read_histories`."""
    return {ident: _local(rows.get(ident), histories[ident], types) for ident in idents}


def _local(row: dict[str, Any] | None, history: History, types: Types) -> LocalState:
    """The same `LocalState` as `read_local` gives, from the row and its newest log row."""
    last = history.rows[0] if history.rows else None
    last_time = as_time(last.changed_at, EPOCH) if last else EPOCH
    last_id = last.id if last else 0
    last_origin = last.origin if last else APP_ORIGIN
    if row is not None:
        record = normalize(row, types)  # already fields (`read_rows`)
        assert record is not None
        changed = as_time(record.get("updated_at"), last_time)
        return LocalState(record, changed, version_of(record) or 0, last_id, last_origin)
    deleted = last is not None and last.op == "d"
    before = as_fields(json_image(last.before), types) if deleted else None
    return LocalState(None, last_time, version_of(before) or 0, last_id, last_origin)


@dataclass(frozen=True)
class DeliveryMarks:
    """Of a subscription's changes the window delivery sends a system (all but its own
    write-backs): the first one not sent yet and the last one sent, by change-log id."""

    first_unsent: int | None
    last_sent: int | None


_MARKS = sa.text(
    "SELECT subscription_id,"
    " MIN(CASE WHEN lsn IS NULL OR lsn > :w THEN id END) AS first_unsent,"
    " MAX(CASE WHEN lsn IS NOT NULL AND lsn <= :w THEN id END) AS last_sent"
    " FROM subscription_change_log"
    " WHERE subscription_id IN :ids AND source_table = :t AND origin <> :o"
    " GROUP BY subscription_id"
).bindparams(sa.bindparam("ids", expanding=True))


def delivery_marks(
    conn: Connection, idents: Collection[str], table: str, system: str, watermark: int
) -> dict[str, DeliveryMarks]:
    """`DeliveryMarks` of every subscription in one query (the delivery's watermark given):
    what `source_side.changed_after(..., watermark)` and `undelivered_until` ask per push."""
    if not idents:
        return {}
    rows = conn.execute(_MARKS, {**_ids(idents), "t": table, "w": watermark, "o": system})
    found = {r.subscription_id: DeliveryMarks(r.first_unsent, r.last_sent) for r in rows}
    return {ident: found.get(ident, DeliveryMarks(None, None)) for ident in idents}


# -- write-backs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalWrite:
    """Make the row of `subscription_id` equal `target` (None: delete it)."""

    subscription_id: str
    target: Mapping[str, Any] | None
    exists: bool


def write_locals(
    conn: Connection, writes: Sequence[LocalWrite], types: Types, origin: str
) -> dict[str, int]:
    """`source_side.write_local` of many rows (distinct ids), tagged with `origin`: one DELETE,
    and one UPDATE or INSERT per set of columns, each an executemany. Returns each written
    subscription's newest change-log id (its write-back's own row)."""
    if not writes:
        return {}
    postgres = conn.dialect.name == "postgresql"
    columns = columns_of(types)
    with origin_tagged(conn, origin):
        deleted = [w.subscription_id for w in writes if w.target is None]
        if deleted:
            table = sa.table(columns.table, sa.column(columns.key))
            delete = sa.delete(table).where(table.c[columns.key] == sa.bindparam("ident"))
            conn.execute(delete, [{"ident": k} for k in _keys(columns, deleted, postgres)])
        for (names, exists), rows in _by_shape(writes, types, postgres).items():
            _write_rows(conn, columns, names, exists, rows)
    newest = sa.text(
        "SELECT subscription_id, MAX(id) AS newest FROM subscription_change_log"
        " WHERE subscription_id IN :ids AND source_table = :t GROUP BY subscription_id"
    ).bindparams(sa.bindparam("ids", expanding=True))
    params = {**_ids(_idents(writes)), "t": columns.table}
    found = {r.subscription_id: int(r.newest) for r in conn.execute(newest, params)}
    return {w.subscription_id: found.get(w.subscription_id, 0) for w in writes}


def _idents(writes: Sequence[LocalWrite]) -> list[str]:
    return [w.subscription_id for w in writes]


Shape = tuple[tuple[str, ...], bool]  # the columns written, and UPDATE (True) or INSERT


def _by_shape(
    writes: Sequence[LocalWrite], types: Types, postgres: bool
) -> dict[Shape, list[tuple[Any, list[Any]]]]:
    """The rows to write grouped by columns written: each as its key in the key column's type
    and its values in the table's columns (`ColumnMap.to_columns`, as `write_local`)."""
    columns = columns_of(types)
    shapes: dict[Shape, list[tuple[Any, list[Any]]]] = defaultdict(list)
    for w in writes:
        if w.target is None:
            continue
        target = w.target
        fields = {n: db_value(target[n], postgres) for n in types if n in target and n != "id"}
        values = columns.to_columns(fields)
        key = db_value(columns.key_value(w.subscription_id), postgres)
        shapes[(tuple(values), w.exists)].append((key, list(values.values())))
    return shapes


def _write_rows(
    conn: Connection,
    columns: ColumnMap,
    names: tuple[str, ...],
    exists: bool,
    rows: list[tuple[Any, list[Any]]],
) -> None:
    # Column names come from the catalog: SQLAlchemy quotes them; binds are numbered, so a
    # column's name never becomes a parameter name.
    table = sa.table(columns.table, sa.column(columns.key), *map(sa.column, names))
    binds = {name: sa.bindparam(f"v{i}") for i, name in enumerate(names)}
    params = [{"ident": key} | {f"v{i}": v for i, v in enumerate(values)} for key, values in rows]
    if exists:
        where = table.c[columns.key] == sa.bindparam("ident")
        stmt = sa.update(table).where(where).values(binds)
    else:
        stmt = sa.insert(table).values({columns.key: sa.bindparam("ident"), **binds})
    conn.execute(stmt, params)
