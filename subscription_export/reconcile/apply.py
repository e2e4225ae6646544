"""The apply step: decide each feed change again under its source row's lock, write the merged
record back (origin = the system) and record the decision (`record.py`), in the write-back's
transaction when the state lives in the source database, else right after it commits.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from subscription_export.delivery.clients import RemoteChange
from subscription_export.delivery.columns import shown_id
from subscription_export.delivery.config import DestinationConfig
from subscription_export.reconcile.feeds import FeedBatch
from subscription_export.reconcile.push_letters import settle_dead_lettered
from subscription_export.reconcile.reads import BatchReads
from subscription_export.reconcile.record import Entry, Provenance, provenance_of
from subscription_export.reconcile.record_batch import Decided, record_decisions
from subscription_export.reconcile.snapshot import snapshot_from
from subscription_export.reconcile.source_batch import LocalWrite, write_locals
from subscription_export.reconcile.source_side import (
    Types,
    destination_types,
    same_database,
    source_writer,
    write_local,
)
from subscription_export.reconcile.strategies import ConflictPolicy
from subscription_export.reconcile.sync_state import init_sync_state
from subscription_export.reconcile.three_way import (
    OUTCOMES,
    Snapshot,
    Verdict,
    decide,
    reasserted_fields,
)
from subscription_export.runtime import Project
from subscription_export.state.leases import default_holder, lease

CRASH_ENV = "SUBSCRIPTION_EXPORT_RECONCILE_CRASH_AT"
"""Test hook: `after_write_back` or `before_push` makes the process `os._exit(CRASH_EXIT)`."""
CRASH_EXIT = 86


def crash_point(name: str) -> None:
    """Die here if the crash test asks for it (never set outside tests)."""
    if os.environ.get(CRASH_ENV) == name:
        os._exit(CRASH_EXIT)


# how many `invalid` changes a report lists (their count is in `outcomes`): ten thousand
# mistaken records must not make a ten-thousand-line summary
INVALID_SHOWN = 50


@dataclass
class ApplyReport:
    """Counts of one applied batch; `metadata()` is what the Dagster op reports."""

    system: str
    after: int
    until: int
    outcomes: Counter[str] = field(default_factory=Counter)
    written_back: int = 0
    pushes_planned: int = 0
    # the first `INVALID_SHOWN` changes set aside as `invalid` (a bad value, an id that is no
    # key): cursor, id, why; all of them are counted in `outcomes` and audited
    invalid: list[dict[str, int | str]] = field(default_factory=list)

    def metadata(self) -> dict[str, int | str]:
        return {
            "system": self.system,
            "cursor_from": self.after,
            "cursor_to": self.until,
            "changes": sum(self.outcomes.values()),
            **{f"outcome.{name}": self.outcomes.get(name, 0) for name in OUTCOMES},
            "written_back": self.written_back,
            "pushes_planned": self.pushes_planned,
        }


# -- one decision's transaction ----------------------------------------------------------------


@dataclass
class WriteBack:
    """The source transaction of one decision (see `write_back_transaction`)."""

    conn: Connection
    state: Engine
    together: bool  # the state tables live in the source database
    recording: Callable[[Connection], object] | None = None

    @contextmanager
    def reading_state(self) -> Iterator[Connection]:
        """Where to read state: this transaction, or a connection of the state database."""
        if self.together:
            yield self.conn
        else:
            with self.state.connect() as state:
                yield state

    def record(self, writes: Callable[[Connection], object]) -> None:
        """The state writes of the decision, run by `write_back_transaction`."""
        self.recording = writes


@contextmanager
def write_back_transaction(project: Project) -> Iterator[WriteBack]:
    """A source transaction for one decision's write-back; the state writes given to
    `record` run in it when the state lives in the source database, else in their own
    transaction right after it commits. A crash in between leaves the write-back without its
    state: the rerun reads the same feed change (its cursor is not recorded), finds the merged
    record in the source and decides the same merged record again (no second write-back, the
    push gets the same key)."""
    with source_writer(project).begin() as conn:
        tx = WriteBack(conn, project.state, same_database(project))
        yield tx
        if tx.together and tx.recording is not None:
            tx.recording(conn)
    if tx.recording is None:
        return
    crash_point("after_write_back")
    if not tx.together:
        with project.state.begin() as state:
            tx.recording(state)


def write_back(
    conn: Connection, snap: Snapshot, verdict: Verdict, types: Types, origin: str
) -> int:
    """Make the source row equal the verdict's target (tagged with `origin`) if it must be
    written; returns the change-log id the decision follows (the write-back's own row)."""
    if not (verdict.applies and verdict.write_local):
        return snap.local.log_id
    exists = snap.local.record is not None
    return write_local(conn, snap.subscription_id, verdict.target, exists, types, origin)


# -- feed changes ------------------------------------------------------------------------------


ROUND_LIMIT = 500
"""Changes decided and written together (one transaction, a few statements per table)."""


def rounds(changes: Sequence[RemoteChange], limit: int = ROUND_LIMIT) -> list[list[RemoteChange]]:
    """The batch cut, in feed order, into runs of at most `limit` changes of distinct
    subscriptions: a later change of a subscription is decided in a later round, on the state
    the earlier one left (as when each change was applied on its own)."""
    out: list[list[RemoteChange]] = []
    seen: set[str] = set()
    for change in changes:
        if not out or change.id in seen or len(out[-1]) >= limit:
            out.append([])
            seen = set()
        out[-1].append(change)
        seen.add(change.id)
    return out


def apply_batch(
    project: Project,
    config: DestinationConfig,
    batch: FeedBatch,
    policy: ConflictPolicy,
    *,
    holder: str | None = None,
    types: Types | None = None,
) -> ApplyReport:
    """Apply every change of the batch in feed order, under the system's reconcile lease, a
    round of distinct subscriptions at a time (`rounds`, `apply_round`). `types`: the
    destination's, when the caller has read them already (a catalog read each)."""
    init_sync_state(project.state)
    report = ApplyReport(config.name, batch.after, batch.until)
    who = holder or default_holder()
    settings = project.settings
    with lease(
        project.state,
        f"reconcile:{config.name}",
        who,
        settings.lease_wait_s,
        settings.lease_ttl_s,
    ) as held:
        # a replayed push's record is what the remote holds: the base of its next edit
        settle_dead_lettered(project.state, config.name)
        types = types if types is not None else destination_types(project, config)
        for changes in rounds(batch.changes):
            held.stop_if_lost()  # another run took the system over: apply nothing more
            for snap, verdict in apply_round(project, config, changes, policy, types=types):
                report.outcomes[verdict.outcome] += 1
                if verdict.outcome == "invalid" and len(report.invalid) < INVALID_SHOWN:
                    report.invalid.append(_invalid(snap))
                report.written_back += int(verdict.applies and verdict.write_local)
                report.pushes_planned += int(verdict.applies and verdict.push)
    return report


def apply_round(
    project: Project,
    config: DestinationConfig,
    changes: Sequence[RemoteChange],
    policy: ConflictPolicy,
    *,
    types: Types,
) -> list[tuple[Snapshot, Verdict]]:
    """Decide and apply changes of distinct subscriptions together, retrying lost races (the
    whole round again: its transaction rolled back, or its write-backs are found done);
    each change's snapshot and verdict, in feed order.

    A write-back the source refuses (`WriteBackRefused`: a CHECK, an enum type, a NOT NULL, a
    foreign key) rolls the round back; the round is then redone change by change, and a change
    still refused on its own is `invalid` with the database's reason, so one such record never
    stops the system's reconcile."""
    for attempt in range(3):
        try:
            return _apply_round_once(project, config, changes, policy, types=types)
        except WriteBackRefused as exc:
            if len(changes) > 1:
                return [
                    pair
                    for change in changes
                    for pair in apply_round(project, config, [change], policy, types=types)
                ]
            if attempt == 2:  # not a lost race: refused every time
                return _apply_round_once(
                    project, config, changes, policy, types=types, refused=exc.reason
                )
        except (sa.exc.IntegrityError, sa.exc.OperationalError):  # lost a race: decide again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


class WriteBackRefused(Exception):
    """The source refused a round's write-back (`DataError`/`IntegrityError` of its own
    rules); `reason` says why in the database's words, escaped."""

    def __init__(self, exc: sa.exc.DBAPIError) -> None:
        super().__init__(str(exc.orig))
        self.reason = refusal_reason(exc)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_REASON_MAX = 300


def refusal_reason(exc: sa.exc.DBAPIError) -> str:
    """The database's own message (PostgreSQL: its primary message and SQLSTATE; no SQL and
    no parameters, which hold the whole round's values), control characters escaped and cut:
    it quotes the remote's value."""
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    message = getattr(diag, "message_primary", None) or str(orig).splitlines()[0]
    code = getattr(orig, "sqlstate", None)
    text = _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), message)
    if len(text) > _REASON_MAX:
        text = text[:_REASON_MAX] + "..."
    return f"the source refused the write-back{f' ({code})' if code else ''}: {text}"


def _apply_round_once(
    project: Project,
    config: DestinationConfig,
    changes: Sequence[RemoteChange],
    policy: ConflictPolicy,
    *,
    types: Types,
    refused: str | None = None,
) -> list[tuple[Snapshot, Verdict]]:
    """Load the round set-based under the rows' locks, decide each change (pure), write the
    write-backs in a few statements, then record every decision (`record_batch`). `refused`:
    the source refused this round's write-back before; each change is `invalid` for it."""
    idents = [change.id for change in changes]
    with write_back_transaction(project) as tx:
        with tx.reading_state() as state:
            reads = BatchReads.load(tx.conn, state, config.name, idents, types, lock=True)
            snaps = [snapshot_from(reads, config, c, ignored=policy.ignored) for c in changes]
        if refused is not None:
            snaps = [s if s.error else dataclasses.replace(s, error=refused) for s in snaps]
        verdicts = [decide(snap, policy) for snap in snaps]
        todo = [
            (s, v) for s, v in zip(snaps, verdicts, strict=True) if v.outcome != "already_applied"
        ]
        try:
            log_ids = write_backs(tx.conn, todo, types, config.name)
        except (sa.exc.DataError, sa.exc.IntegrityError) as exc:
            raise WriteBackRefused(exc) from exc
        decided = [
            Decided(
                snap, verdict, log_ids[snap.subscription_id], _feed_entry(snap, verdict, policy)
            )
            for snap, verdict in todo
        ]
        if decided:
            tx.record(lambda conn: record_decisions(conn, config.name, decided))
    return list(zip(snaps, verdicts, strict=True))


def _invalid(snap: Snapshot) -> dict[str, int | str]:
    """An `invalid` change as the run reports it (the id escaped and cut: remote data)."""
    return {"cursor": snap.cursor, "id": shown_id(snap.subscription_id), "reason": snap.error or ""}


def write_backs(
    conn: Connection, decided: Sequence[tuple[Snapshot, Verdict]], types: Types, origin: str
) -> dict[str, int]:
    """`write_back` of a round's decisions together: each subscription's change-log id its
    decision follows (its write-back's own row, or the newest row when nothing is written)."""
    writes = [
        LocalWrite(snap.subscription_id, verdict.target, snap.local.record is not None)
        for snap, verdict in decided
        if verdict.applies and verdict.write_local
    ]
    written = write_locals(conn, writes, types, origin)
    return {
        snap.subscription_id: written.get(snap.subscription_id, snap.local.log_id)
        for snap, _ in decided
    }


def _feed_entry(snap: Snapshot, verdict: Verdict, policy: ConflictPolicy) -> Entry:
    return Entry(
        ref=f"feed:{snap.cursor}",
        window_key=f"reconcile:{snap.subscription_id}",
        lsn=snap.cursor,
        provenance=_feed_provenance(snap, verdict, policy),
    )


def _feed_provenance(snap: Snapshot, verdict: Verdict, policy: ConflictPolicy) -> Provenance | None:
    """The values the write-back changed, and those the remote reasserted with the stronger
    claim, attributed to the remote system at its edit's time. A reasserted value without a
    write-back is in the source row from its current version on."""
    system, at = snap.destination, snap.remote.changed_at
    provenance = provenance_of(verdict, snap.local.record, system, at, policy.ignored)
    reasserted = reasserted_fields(snap, verdict, policy)
    if not reasserted:
        return provenance
    if provenance is None:
        return reasserted, system, at, snap.local.version
    return {**reasserted, **provenance[0]}, system, at, provenance[3]
