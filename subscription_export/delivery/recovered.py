"""Deliver changes that `quarantine replay` recovered into a window the destination already has.

A destination that has not completed the window yet gets the recovered changes with the window
itself (its Parquet file holds them now). One that has completed it missed them, so they are
sent now, under the window's delivery lease, each with its original LSN and the idempotency key
of (destination, window, LSN) - the key a normal delivery of that window would have used, so a
re-send after a crash is applied once.

Order: destinations keep one record's changes in LSN order (the ERP and CRM refuse a version
older than theirs). A recovered change is older than every change the destination received
after it, so if the destination already holds a later change of the same record, sending the
recovered one would overwrite newer state (or be refused as stale). Such a change is recorded
as `superseded`, not sent, and reported; the newer state it missed already contains whatever
the record became. "Holds a later change" means: a later LSN of the same subscription lies in
a window the destination completed and is not itself out of the files (held in the quarantine)
or a recovered change not yet delivered to it.

Each outcome - delivered, superseded, skipped (an echo of the destination's own write-back) or
dead_letter (recorded as a dead letter of the window, replayable like any other) - is kept in
`quarantine_deliveries`, one row per (destination, LSN), so a second replay sends nothing again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from subscription_export.delivery.clients import DeliveryClient
from subscription_export.delivery.columns import destination_table
from subscription_export.delivery.config import DestinationConfig
from subscription_export.delivery.dead_letters import held_subscriptions, record_dead_letters
from subscription_export.delivery.dispatch import deliver
from subscription_export.delivery.mapping import ChangeRow
from subscription_export.delivery.one_window import (
    _dead_letters,
    read_rows,
    table_columns,
    window_parquet,
)
from subscription_export.delivery.prior_state import mapping_prior_state, move_past
from subscription_export.runtime import Project
from subscription_export.state.leases import lease
from subscription_export.state.progress import completed_keys
from subscription_export.state.tables import quarantine, quarantine_deliveries
from subscription_export.state.windows import Window, parse_window_key

_LATER = sa.text(
    "SELECT lsn FROM subscription_change_log"
    " WHERE subscription_id = :id AND lsn > :lsn AND source_table = :table ORDER BY lsn"
)


@dataclass(frozen=True)
class RecoveredDelivery:
    destination: str
    lsn: int
    subscription_id: str
    outcome: str  # delivered | superseded | skipped | dead_letter | with_window
    detail: str


def deliver_recovered(
    project: Project,
    destination: DestinationConfig,
    window: Window,
    lsns: Collection[int],
    holder: str,
    client: DeliveryClient,
) -> list[RecoveredDelivery]:
    """Send the window's recovered changes `lsns` the destination missed (see module doc)."""
    name, state = destination.name, project.state
    with lease(state, f"{name}:{window.key}", holder, wait_s=project.settings.lease_wait_s):
        todo = set(lsns) - _settled(project, name, lsns)
        if not todo:
            return []
        if window.key not in completed_keys(state, name, window.lo - 1):
            # Its Parquet file holds them now: the window's own delivery sends them.
            results = [
                RecoveredDelivery(name, lsn, "", "with_window", "sent with the window")
                for lsn in sorted(todo)
            ]
            _record(project, window.key, results)
            return results
        before: list[ChangeRow] = []
        wanted: list[ChangeRow] = []
        columns = table_columns(project, destination)
        for rows in read_rows(window_parquet(project, window.key, destination), 10_000, columns):
            for row in rows:
                (wanted if row["_lsn"] in todo else before).append(row)
        results: list[RecoveredDelivery] = []
        for row in sorted(wanted, key=lambda r: r["_lsn"]):
            newer = _newer_at_destination(project, destination, row)
            if newer is not None:
                results.append(_done(name, row, "superseded", f"it holds LSN {newer}"))
                continue
            prior = _prior(project, destination, window, before, row["_lsn"])
            results.append(_send(project, destination, window, client, row, prior))
        _record(project, window.key, results)
        return results


def _settled(project: Project, name: str, lsns: Collection[int]) -> set[int]:
    with project.state.connect() as conn:
        rows = conn.execute(
            sa.select(quarantine_deliveries.c.lsn).where(
                quarantine_deliveries.c.destination == name,
                quarantine_deliveries.c.lsn.in_(list(lsns)),
            )
        ).all()
    return {int(r[0]) for r in rows}


def _newer_at_destination(
    project: Project, destination: DestinationConfig, row: ChangeRow
) -> int | None:
    """The first later LSN of the row's record the destination holds, or None."""
    name, table = destination.name, destination_table(project, destination)
    params = {"id": row["id"], "lsn": row["_lsn"], "table": table}
    with project.source.connect() as conn:
        later = [int(r[0]) for r in conn.execute(_LATER, params)]
    if not later:
        return None
    ranges = [parse_window_key(k) for k in completed_keys(project.state, name)]
    inside = [lsn for lsn in later if any(lo <= lsn <= hi for lo, hi in ranges)]
    if not inside:
        return None
    with project.state.connect() as conn:
        absent = {
            int(r[0])
            for r in conn.execute(
                sa.select(quarantine.c.lsn).where(quarantine.c.lsn.in_(inside))
            ).all()
        }
    received = _settled_delivered(project, name, absent)
    return next((lsn for lsn in inside if lsn not in absent or lsn in received), None)


def _settled_delivered(project: Project, name: str, lsns: Collection[int]) -> set[int]:
    if not lsns:
        return set()
    with project.state.connect() as conn:
        rows = conn.execute(
            sa.select(quarantine_deliveries.c.lsn).where(
                quarantine_deliveries.c.destination == name,
                quarantine_deliveries.c.lsn.in_(list(lsns)),
                quarantine_deliveries.c.outcome == "delivered",
            )
        ).all()
    return {int(r[0]) for r in rows}


def _prior(
    project: Project,
    destination: DestinationConfig,
    window: Window,
    rows: Sequence[ChangeRow],
    lsn: int,
) -> dict[str, Mapping[str, Any]] | None:
    """Accounting books price differences: the record's image just before the change."""
    if destination.kind != "accounting":
        return None
    prior = mapping_prior_state(project.source, window, table_columns(project, destination))
    move_past(prior, [r for r in rows if r["_lsn"] < lsn])
    return prior


def _send(
    project: Project,
    destination: DestinationConfig,
    window: Window,
    client: DeliveryClient,
    row: ChangeRow,
    prior: dict[str, Mapping[str, Any]] | None,
) -> RecoveredDelivery:
    held = held_subscriptions(project.state, destination.name)
    report = deliver([row], client, window_key=window.key, prior_state=prior, held=held)
    [result] = report.results
    if result.status == "dead_letter":
        letters = _dead_letters(client, [row], report.results, window.key, prior)
        record_dead_letters(project.state, destination.name, window.key, letters)
        return _done(destination.name, row, "dead_letter", result.error or "not delivered")
    return _done(destination.name, row, result.status, result.idempotency_key or "")


def _done(name: str, row: ChangeRow, outcome: str, detail: str) -> RecoveredDelivery:
    return RecoveredDelivery(name, int(row["_lsn"]), str(row["id"]), outcome, detail)


def _record(project: Project, window_key: str, results: Sequence[RecoveredDelivery]) -> None:
    """One row per (destination, LSN); a dead letter is settled by the dead-letter replay."""
    now = dt.datetime.now(dt.UTC)
    with project.state.begin() as conn:
        for r in results:
            conn.execute(
                sa.insert(quarantine_deliveries).values(
                    destination=r.destination,
                    lsn=r.lsn,
                    window_key=window_key,
                    subscription_id=r.subscription_id,
                    outcome=r.outcome,
                    detail=r.detail,
                    at=now,
                )
            )
