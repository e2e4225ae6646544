"""Dead letters: changes a destination did not accept, kept with everything needed to replay them.

A dead letter is one change (destination, LSN) that ended undelivered: a permanent refusal
(400/404/409 stale/422), a retry budget exhausted on 429/5xx/timeouts, or a row that does not
map to the destination's payload. It keeps the exact units that were sent - idempotency key and
body of each - so `replay` re-sends the same operation under the same key: if the remote did
apply it (the answer was lost), the remote answers with its stored result and applies nothing
again.

Rows are unique per (destination, LSN): recording the same failure again (a re-run of the
window) updates error, attempts and last_seen rather than adding a row. Status: `open` (blocks
the destination's watermark under policy `block`), `replayed` (delivered later), `discarded`
(an operator decided the change will never be delivered; no longer blocks).

Policy `SUBSCRIPTION_EXPORT_ON_DEAD_LETTER`: `block` (default) - a window with an open dead letter
is not completed for the destination, so its watermark stops before that window and the
following windows wait (see `window_delivery`); `skip` - record and move on.

The table (`state/tables.py`) lives in the state database; `init_dead_letters` makes sure it exists.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.codec import dumps, loads
from subscription_export.core.errors import ConfigError
from subscription_export.core.secrets import mask_in_text
from subscription_export.delivery.outcome import blocked_message
from subscription_export.state.migrate import upgrade
from subscription_export.state.tables import dead_letters

if TYPE_CHECKING:  # at run time only `DeadLetter.item` needs them (it imports them itself)
    from subscription_export.delivery.clients import (
        DeliveryClient,
        DeliveryResult,
        OutboundItem,
        Unit,
    )

ENV_POLICY = "SUBSCRIPTION_EXPORT_ON_DEAD_LETTER"
PUSH_WINDOW_KEY = "reconcile"
"""`window_key` of a reconcile push's dead letter: it belongs to no window, so it never blocks a
window's completion; its `lsn` is minus the push's id (unique, and sorted before every change)."""
Policy = Literal["block", "skip"]
Status = Literal["open", "replayed", "discarded"]
STATUSES: tuple[Status, ...] = ("open", "replayed", "discarded")


def init_dead_letters(engine: Engine) -> None:
    """The state schema at head, dead letters included (`state.migrate.upgrade`: one query the
    first time per engine, nothing after)."""
    upgrade(engine)


def dead_letter_policy(env: Mapping[str, str] | None = None) -> Policy:
    raw = (os.environ if env is None else env).get(ENV_POLICY) or "block"
    if raw not in ("block", "skip"):
        raise ConfigError(f"{ENV_POLICY}={raw!r}: use block or skip")
    return cast(Policy, raw)


@dataclass(frozen=True)
class NewDeadLetter:
    """One undelivered change as the delivery saw it."""

    lsn: int
    subscription_id: str
    idempotency_key: str
    units: tuple[Unit, ...]
    row: Mapping[str, Any]
    error: str
    attempts: int


@dataclass(frozen=True)
class DeadLetter:
    id: int
    destination: str
    window_key: str
    lsn: int
    subscription_id: str
    idempotency_key: str
    payload: dict[str, Any]
    error: str
    attempts: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    status: Status

    def item(self) -> OutboundItem:
        """The operation to re-send: the same keys and bodies as the first attempt."""
        from subscription_export.delivery.clients import OutboundItem, Unit

        units = tuple(Unit(u["key"], u["body"]) for u in self.payload.get("units", []))
        if not units:
            return OutboundItem(
                self.lsn,
                self.subscription_id,
                self.idempotency_key,
                error=f"nothing to send (the change did not map): {self.error}",
            )
        return OutboundItem(self.lsn, self.subscription_id, self.idempotency_key, units)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "destination": self.destination,
            "window_key": self.window_key,
            "lsn": self.lsn,
            "subscription_id": self.subscription_id,
            "idempotency_key": self.idempotency_key,
            "error": self.error,
            "attempts": self.attempts,
            "first_seen": self.first_seen.isoformat(),
            "last_seen": self.last_seen.isoformat(),
            "status": self.status,
        }


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)  # SQLite drops tzinfo


def _from_row(row: sa.Row[Any]) -> DeadLetter:
    return DeadLetter(
        id=int(row.id),
        destination=row.destination,
        window_key=row.window_key,
        lsn=int(row.lsn),
        subscription_id=row.subscription_id,
        idempotency_key=row.idempotency_key,
        payload=loads(row.payload),
        error=mask_in_text(row.error),  # rows stored before errors were masked
        attempts=int(row.attempts),
        first_seen=_utc(row.first_seen),
        last_seen=_utc(row.last_seen),
        status=row.status,
    )


def payload_text(letter: NewDeadLetter) -> str:
    """Units (what was sent) plus the change row (for people reading the dead letter)."""
    units = [{"key": u.key, "body": u.body} for u in letter.units]
    return dumps({"units": units, "row": dict(letter.row)})


def record_dead_letters(
    engine: Engine, destination: str, window_key: str, letters: Sequence[NewDeadLetter]
) -> None:
    """Insert new dead letters, or update the existing one of the same (destination, LSN).

    One transaction for the whole window, so a crash leaves all or none of them: the presence
    of a window's dead letters means one delivery pass reached the end of that window.
    An existing `replayed` row becomes `open` again (it failed again); `discarded` stays.
    """
    if not letters:
        return
    init_dead_letters(engine)
    now = dt.datetime.now(dt.UTC)
    by_lsn = {letter.lsn: letter for letter in letters}
    table = dead_letters
    with engine.begin() as conn:
        existing = {
            int(r.lsn): r
            for r in conn.execute(
                sa.select(table.c.id, table.c.lsn, table.c.attempts, table.c.status).where(
                    table.c.destination == destination, table.c.lsn.in_(list(by_lsn))
                )
            )
        }
        inserts = []
        for lsn, letter in by_lsn.items():
            row = existing.get(lsn)
            if row is None:
                inserts.append(
                    {
                        "destination": destination,
                        "window_key": window_key,
                        "lsn": lsn,
                        "subscription_id": letter.subscription_id,
                        "idempotency_key": letter.idempotency_key,
                        "payload": payload_text(letter),
                        "error": mask_in_text(letter.error),
                        "attempts": letter.attempts,
                        "first_seen": now,
                        "last_seen": now,
                        "status": "open",
                    }
                )
                continue
            conn.execute(
                sa.update(table)
                .where(table.c.id == row.id)
                .values(
                    payload=payload_text(letter),
                    error=mask_in_text(letter.error),
                    attempts=int(row.attempts) + letter.attempts,
                    last_seen=now,
                    status="discarded" if row.status == "discarded" else "open",
                )
            )
        if inserts:
            conn.execute(sa.insert(table), inserts)


def resolve_delivered(engine: Engine, destination: str, results: Iterable[DeliveryResult]) -> int:
    """Mark open dead letters whose change has now been delivered (or skipped) as replayed."""
    init_dead_letters(engine)
    done = {r.lsn: r.attempts for r in results if r.status != "dead_letter"}
    if not done:
        return 0
    table = dead_letters
    now = dt.datetime.now(dt.UTC)
    changed = 0
    with engine.begin() as conn:
        rows = conn.execute(
            sa.select(table.c.id, table.c.lsn, table.c.attempts).where(
                table.c.destination == destination,
                table.c.status == "open",
                table.c.lsn.in_(list(done)),
            )
        ).all()
        for row in rows:
            conn.execute(
                sa.update(table)
                .where(table.c.id == row.id)
                .values(
                    status="replayed",
                    attempts=int(row.attempts) + done[int(row.lsn)],
                    last_seen=now,
                )
            )
            changed += 1
    return changed


def list_dead_letters(
    engine: Engine,
    destination: str | None = None,
    *,
    status: Status | None = "open",
    window_key: str | None = None,
    ids: Sequence[int] | None = None,
    limit: int | None = None,
) -> list[DeadLetter]:
    """Dead letters in (destination, LSN) order; `status=None` lists every status."""
    init_dead_letters(engine)
    table = dead_letters
    query = sa.select(table).order_by(table.c.destination, table.c.lsn)
    if destination is not None:
        query = query.where(table.c.destination == destination)
    if status is not None:
        query = query.where(table.c.status == status)
    if window_key is not None:
        query = query.where(table.c.window_key == window_key)
    if ids is not None:
        query = query.where(table.c.id.in_(list(ids)))
    if limit is not None:
        query = query.limit(limit)
    with engine.connect() as conn:
        return [_from_row(row) for row in conn.execute(query)]


def blocked_reason(engine: Engine, destination: str, window_key: str, count: int) -> str:
    """Why a destination is blocked, with the first open dead letter's error: the cause the
    operator fixes (connection refused, a refusal by the remote system) before replaying."""
    first = list_dead_letters(engine, destination, window_key=window_key, limit=1)
    cause = f"; first error (LSN {first[0].lsn}): {first[0].error}" if first else ""
    return blocked_message(destination, window_key, count) + cause


def held_subscriptions(
    engine: Engine, destination: str, *, except_window: str | None = None
) -> set[str]:
    """Subscriptions with an open dead letter at `destination` (outside `except_window`): their
    later changes are held back behind it, to reach the destination in order."""
    init_dead_letters(engine)
    table = dead_letters
    query = sa.select(table.c.subscription_id).where(
        table.c.destination == destination, table.c.status == "open"
    )
    if except_window is not None:
        query = query.where(table.c.window_key != except_window)
    with engine.connect() as conn:
        return set(conn.execute(query.distinct()).scalars())


def statuses_by_lsn(engine: Engine, destination: str, lsns: Sequence[int]) -> dict[int, Status]:
    """LSN -> status of the destination's dead letters with these LSNs."""
    init_dead_letters(engine)
    table = dead_letters
    query = sa.select(table.c.lsn, table.c.status).where(
        table.c.destination == destination, table.c.lsn.in_(list(lsns))
    )
    with engine.connect() as conn:
        return {int(lsn): status for lsn, status in conn.execute(query)}


def open_windows(engine: Engine, destination: str) -> dict[str, int]:
    """Window key -> number of open dead letters of `destination` in it."""
    init_dead_letters(engine)
    table = dead_letters
    query = (
        sa.select(table.c.window_key, sa.func.count())
        .where(table.c.destination == destination, table.c.status == "open")
        .group_by(table.c.window_key)
    )
    with engine.connect() as conn:
        return {key: int(n) for key, n in conn.execute(query)}


def held_behind(engine: Engine, ids: Sequence[int]) -> list[int]:
    """Open dead letters of the same destination and subscription as these (discarded) ones,
    with a later LSN: the changes held back behind them, to send now that they are settled."""
    init_dead_letters(engine)
    table = dead_letters
    given = list_dead_letters(engine, status=None, ids=ids)
    found: list[int] = []
    with engine.connect() as conn:
        for letter in given:
            found += conn.execute(
                sa.select(table.c.id).where(
                    table.c.destination == letter.destination,
                    table.c.subscription_id == letter.subscription_id,
                    table.c.status == "open",
                    table.c.lsn > letter.lsn,
                )
            ).scalars()
    return sorted(set(found) - set(ids))


def discard(engine: Engine, ids: Sequence[int]) -> int:
    """Give up on dead letters: they stop blocking; the changes are never delivered (the
    changes held back behind them are sent by a replay: `held_behind`)."""
    init_dead_letters(engine)
    table = dead_letters
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(table)
            .where(table.c.id.in_(list(ids)), table.c.status == "open")
            .values(status="discarded", last_seen=dt.datetime.now(dt.UTC))
        )
    return int(result.rowcount or 0)


@dataclass(frozen=True)
class ReplayResult:
    letter: DeadLetter
    replayed: bool
    attempts: int
    error: str | None


def replay(
    engine: Engine,
    client_for: Callable[[str], DeliveryClient],
    *,
    destination: str | None = None,
    ids: Sequence[int] | None = None,
    chunk_size: int = 100,
    on_result: Callable[[ReplayResult], None] | None = None,
) -> list[ReplayResult]:
    """Re-send open dead letters (oldest LSN first per destination) with their original keys.

    A delivered one is marked `replayed`; one that fails again stays `open` with the new error
    and its attempts added, and the later letters of its subscription stay open unsent (held
    back: sent before it, they would make it stale for ever). `client_for(destination)` gives
    the client of each destination (the caller owns and closes it). Sent `chunk_size` at a
    time, so batch APIs get batches while each destination's changes keep their LSN order.
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")
    letters = list_dead_letters(engine, destination, status="open", ids=ids)
    results: list[ReplayResult] = []
    by_destination: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_destination.setdefault(letter.destination, []).append(letter)
    for name, group in by_destination.items():
        client = client_for(name)
        failed: set[str] = set()  # a record whose letter failed again keeps its later ones
        for start in range(0, len(group), chunk_size):
            chunk = group[start : start + chunk_size]
            sent = client.send([letter.item() for letter in chunk], held=failed)
            failed |= {r.subscription_id for r in sent if r.status == "dead_letter"}
            for letter, outcome in zip(chunk, sent, strict=True):
                result = _settle(engine, letter, outcome)
                results.append(result)
                if on_result is not None:
                    on_result(result)
    return results


def _settle(engine: Engine, letter: DeadLetter, outcome: DeliveryResult) -> ReplayResult:
    table = dead_letters
    now = dt.datetime.now(dt.UTC)
    delivered = outcome.status != "dead_letter"
    values: dict[str, Any] = {"attempts": letter.attempts + outcome.attempts, "last_seen": now}
    if delivered:
        values["status"] = "replayed"
    else:
        values["error"] = mask_in_text(outcome.error or "not delivered")
    with engine.begin() as conn:
        conn.execute(
            sa.update(table)
            .where(table.c.id == letter.id, table.c.status == "open")
            .values(**values)
        )
    return ReplayResult(
        letter, delivered, outcome.attempts, None if delivered else values.get("error")
    )
