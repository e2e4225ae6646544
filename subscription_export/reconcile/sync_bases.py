"""Per (destination, subscription) working state of the reconcile: the sync base (what the
remote holds, the last agreed record, the last feed record) and the provenance of each field
value a write-back produced (docs/conflicts.md, "Which base" and "Three systems").
Tables: `sync_state.sync_base`, `sync_state.field_provenance`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from subscription_export.core.codec import dumps, loads
from subscription_export.core.db import upsert, upsert_many
from subscription_export.reconcile.sync_state import field_provenance, now, utc
from subscription_export.state.tables import sync_base

# -- sync base ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyncBase:
    destination: str
    subscription_id: str
    held_record: dict[str, Any] | None  # JSON values
    held_version: int | None
    agreed_record: dict[str, Any] | None
    log_id: int
    remote_cursor: int
    updated_at: dt.datetime
    feed_record: dict[str, Any] | None = None
    feed_version: int | None = None


def get_base(conn: Connection, destination: str, subscription_id: str) -> SyncBase | None:
    row = conn.execute(
        sa.select(sync_base).where(
            sync_base.c.destination == destination,
            sync_base.c.subscription_id == subscription_id,
        )
    ).first()
    return None if row is None else _sync_base(row)


def get_bases(
    conn: Connection, destination: str, subscription_ids: Collection[str]
) -> dict[str, SyncBase]:
    """The sync bases of these subscriptions in one query (a feed batch's)."""
    if not subscription_ids:
        return {}
    rows = conn.execute(
        sa.select(sync_base).where(
            sync_base.c.destination == destination,
            sync_base.c.subscription_id.in_(sorted(subscription_ids)),
        )
    ).all()
    return {row.subscription_id: _sync_base(row) for row in rows}


def _sync_base(row: Any) -> SyncBase:
    return SyncBase(
        row.destination,
        row.subscription_id,
        loads(row.held_record),
        row.held_version,
        loads(row.agreed_record),
        int(row.log_id),
        int(row.remote_cursor),
        utc(row.updated_at),  # type: ignore[arg-type]
        loads(row.feed_record),
        row.feed_version,
    )


def put_base(
    conn: Connection,
    destination: str,
    subscription_id: str,
    *,
    held_record: Mapping[str, Any] | None,
    held_version: int | None,
    agreed_record: Mapping[str, Any] | None,
    log_id: int,
    remote_cursor: int,
    feed_record: Mapping[str, Any] | None,
    feed_version: int | None,
) -> None:
    """Upsert; `remote_cursor` never moves backwards (a late re-run cannot un-apply), and the
    feed record is only replaced by the record of a later feed change."""
    current = get_base(conn, destination, subscription_id)
    row = base_row(
        current,
        destination,
        subscription_id,
        held_record=held_record,
        held_version=held_version,
        agreed_record=agreed_record,
        log_id=log_id,
        remote_cursor=remote_cursor,
        feed_record=feed_record,
        feed_version=feed_version,
    )
    upsert(conn, sync_base, row, ("destination", "subscription_id"))


def base_row(
    current: SyncBase | None,
    destination: str,
    subscription_id: str,
    *,
    held_record: Mapping[str, Any] | None,
    held_version: int | None,
    agreed_record: Mapping[str, Any] | None,
    log_id: int,
    remote_cursor: int,
    feed_record: Mapping[str, Any] | None,
    feed_version: int | None,
    render: Callable[[Any], str] = dumps,
) -> dict[str, Any]:
    """The `sync_base` row `put_base` writes over `current` (the cursor rule applied);
    `render` is `dumps` or one that remembers (`codec.Renderer`)."""
    cursor = max(remote_cursor, current.remote_cursor) if current else remote_cursor
    if current is not None and remote_cursor < current.remote_cursor:
        feed_record, feed_version = current.feed_record, current.feed_version
    held_text = render(held_record)
    # a write-back without a push holds and agrees on the same record: render it once
    agreed_text = held_text if agreed_record is held_record else render(agreed_record)
    return {
        "destination": destination,
        "subscription_id": subscription_id,
        "held_record": held_text,
        "held_version": held_version,
        "agreed_record": agreed_text,
        "log_id": log_id,
        "remote_cursor": cursor,
        "feed_record": render(feed_record),
        "feed_version": feed_version,
        "updated_at": now(),
    }


def put_bases(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert `base_row`s (read over the current bases in the same transaction) in one
    statement."""
    upsert_many(conn, sync_base, rows, ("destination", "subscription_id"))


def mark_held(
    conn: Connection,
    destination: str,
    subscription_id: str,
    record: Mapping[str, Any] | None,
    version: int | None,
    log_id: int,
) -> None:
    """After a push: the remote holds `record` now."""
    conn.execute(
        sa.update(sync_base)
        .where(
            sync_base.c.destination == destination,
            sync_base.c.subscription_id == subscription_id,
        )
        .values(held_record=dumps(record), held_version=version, log_id=log_id, updated_at=now())
    )


_MARK_HELD = (
    sa.update(sync_base)
    .where(
        sync_base.c.destination == sa.bindparam("d"),
        sync_base.c.subscription_id == sa.bindparam("s"),
    )
    .values(
        held_record=sa.bindparam("r"),
        held_version=sa.bindparam("v"),
        log_id=sa.bindparam("l"),
        updated_at=sa.bindparam("at"),
    )
)


def mark_held_many(
    conn: Connection,
    destination: str,
    held: Sequence[tuple[str, Mapping[str, Any] | None, int | None, int]],
) -> None:
    """`mark_held` of many (subscription, record, version, log id), in order, in one statement."""
    if not held:
        return
    moment = now()
    conn.execute(
        _MARK_HELD,
        [
            {
                "d": destination,
                "s": ident,
                "r": dumps(record),
                "v": version,
                "l": log_id,
                "at": moment,
            }
            for ident, record, version, log_id in held
        ],
    )


# -- field provenance --------------------------------------------------------------------------


@dataclass(frozen=True)
class Provenance:
    value: Any  # JSON value the system produced
    system: str
    changed_at: dt.datetime
    version: int | None = None  # the source row version the value is in from (None: unknown)


def get_provenance(conn: Connection, subscription_id: str) -> dict[str, Provenance]:
    rows = conn.execute(
        sa.select(field_provenance).where(field_provenance.c.subscription_id == subscription_id)
    ).all()
    return {r.field: _provenance(r) for r in rows}


def get_provenances(
    conn: Connection, subscription_ids: Collection[str]
) -> dict[str, dict[str, Provenance]]:
    """The field provenance of these subscriptions in one query (empty dict: none recorded)."""
    out: dict[str, dict[str, Provenance]] = {ident: {} for ident in subscription_ids}
    if not out:
        return out
    rows = conn.execute(
        sa.select(field_provenance).where(
            field_provenance.c.subscription_id.in_(sorted(subscription_ids))
        )
    ).all()
    for r in rows:
        out[r.subscription_id][r.field] = _provenance(r)
    return out


def _provenance(r: Any) -> Provenance:
    return Provenance(loads(r.value), r.system, utc(r.changed_at), r.version)  # type: ignore[arg-type]


def put_provenance(
    conn: Connection,
    subscription_id: str,
    values: Mapping[str, Any],
    system: str,
    changed_at: dt.datetime,
    version: int | None = None,
) -> None:
    """Record that `system` produced these field values at `changed_at`, present in the
    source row from `version` on."""
    for row in provenance_rows(subscription_id, values, system, changed_at, version):
        upsert(conn, field_provenance, row, ("subscription_id", "field"))


def provenance_rows(
    subscription_id: str,
    values: Mapping[str, Any],
    system: str,
    changed_at: dt.datetime,
    version: int | None = None,
) -> list[dict[str, Any]]:
    return [
        {
            "subscription_id": subscription_id,
            "field": name,
            "value": dumps(value),
            "system": system,
            "changed_at": changed_at,
            "version": version,
        }
        for name, value in sorted(values.items())
    ]


def put_provenances(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert `provenance_rows` of many subscriptions in one statement."""
    upsert_many(conn, field_provenance, rows, ("subscription_id", "field"))
