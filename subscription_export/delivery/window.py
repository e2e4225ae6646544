"""Deliver one exported window to one destination, exactly once in effect, in LSN order.

What a call does (`deliver_window`), and why:

1. **Earlier windows first.** The ERP and CRM refuse a version older than the one they hold, so
   delivering window 2 before window 1 would turn window 1's good changes into stale-version
   dead letters. A destination therefore takes windows strictly in order: before its own
   window, a call delivers every earlier window the destination has not completed (waiting,
   up to `lease_wait_s`, for a window whose Parquet export has not finished yet - its run is
   probably in flight; then `DeliveryOrderError`, which Dagster's step retry repeats).
2. **Under a lease** `"{destination}:{window}"`, so two runs never send the same window at
   once; a window already completed is not sent again (only the watermark is advanced, which
   covers a crash between recording and advancing).
3. **Read the window's Parquet file in batches** of `read_batch_size` rows and `deliver` each
   batch (bounded concurrency, one lane per subscription, see `sync.delivery`). Batches follow
   each other, so each subscription's changes still arrive in LSN order. Accounting gets each
   subscription's image before the window from the source change log (`prior_state`), chained
   from batch to batch. Rows whose `_origin` is this destination are echoes of its own
   write-backs and are skipped (`skipped` in the metrics).
4. **Dead letters** are recorded at the end, all in one transaction (so a window that has dead
   letters was delivered to its end once); open dead letters of this window whose change got
   through this time are marked `replayed`.
5. **Complete and advance**: unless the policy is `block` and the window has an open dead
   letter, record the window as completed for the destination (`record_completed`, consumer =
   the destination name) and `advance` its watermark contiguously.

Policy `block` (default): a window with an open dead letter is not completed, so **the
destination's watermark stops before that whole window** (watermarks move by windows, never
inside one), and later windows are refused with `DestinationBlocked` - the whole window, and
everything after it, waits until its dead letters are replayed (`replay_dead_letters`, which
then completes the window and catches up the windows behind it) or discarded. The other changes
of the blocked window have been delivered already; that is harmless because every operation is
keyed and re-sending it is answered from the remote's idempotency store. Policy `skip`:
dead letters are recorded, the window completes, the watermark moves on.

Crash safety: every operation's idempotency key is derived from (destination, window, LSN), so
re-running a window after a kill at any point re-sends the same keys with the same bodies and
the remote applies each once. The lease of a killed holder expires after its TTL; a re-run with
the same holder name takes it over at once.

Deletes: the ERP answers 404 for a record it does not have, which the client counts as
delivered (already deleted); the CRM answers `ok` with `absent`; accounting books the refund of
the deleted subscription's recognized price whatever the remote holds (it is a ledger). No
Dagster import here: the assets in `defs/destinations.py` and the CLI call these functions.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from subscription_export.core.errors import SubscriptionExportError
from subscription_export.delivery.clients import DeliveryClient, DeliveryResult
from subscription_export.delivery.config import DestinationConfig, DestinationsConfig
from subscription_export.delivery.dead_letters import (
    NewDeadLetter,
    Policy,
    ReplayResult,
    dead_letter_policy,
    init_dead_letters,
    list_dead_letters,
    open_windows,
    record_dead_letters,
    replay,
    resolve_delivered,
)
from subscription_export.delivery.dispatch import DeliveryStats, deliver
from subscription_export.delivery.mapping import ChangeRow, is_delete
from subscription_export.delivery.prior_state import prior_images
from subscription_export.formats.parquet_batches import parquet_batches
from subscription_export.metrics.latency import file_latency_percentiles
from subscription_export.metrics.store import ExportMetrics, record_export_metrics
from subscription_export.runtime import Project
from subscription_export.state.leases import lease
from subscription_export.state.progress import (
    CompletedExport,
    advance,
    completed_keys,
    record_completed,
)
from subscription_export.state.windows import Window, find_window, list_windows

Status = Literal["delivered", "blocked", "already_delivered"]
PARQUET_CONSUMER = "parquet"


class DestinationBlocked(SubscriptionExportError):
    """An earlier window has open dead letters and the policy is `block`."""

    exit_code = 3


class DeliveryOrderError(SubscriptionExportError):
    """An earlier window has not been exported yet, so this one cannot be delivered yet."""

    exit_code = 3


class DestinationConfigMissing(SubscriptionExportError):
    """Dead letters exist for a destination the configuration no longer declares."""


def blocked_message(destination: str, window_key: str, count: int) -> str:
    return (
        f"{destination}: window {window_key} has {count} open dead letter(s) and the policy is"
        f" block; replay them (subscription-export dead-letters replay --destination"
        f" {destination}) or discard them"
    )


@dataclass(frozen=True)
class WindowDeliveryOutcome:
    """What delivering one window did; `metadata()` is what the Dagster asset reports."""

    destination: str
    window: Window
    status: Status
    watermark: int
    rows: int = 0
    sent: int = 0  # rows that needed at least one request
    delivered: int = 0
    skipped: int = 0  # echoes of the destination's own changes, rows that book nothing
    retried: int = 0  # attempts beyond the first, summed over rows
    dead_lettered: int = 0  # rows that ended as dead letters in this call
    open_dead_letters: int = 0  # open dead letters of this window after the call
    batches: int = 0
    elapsed_s: float = 0.0
    batch_latency_p50_s: float = 0.0  # median over read batches' medians (exact for one batch)
    batch_latency_max_s: float = 0.0
    caught_up: tuple[str, ...] = ()  # earlier windows this call delivered first

    @property
    def records_per_s(self) -> float:
        return round(self.rows / self.elapsed_s, 1) if self.elapsed_s > 0 else 0.0

    def metadata(self) -> dict[str, object]:
        return {
            "destination": self.destination,
            "status": self.status,
            "lsn_from": self.window.lo,
            "lsn_to": self.window.hi,
            "rows": self.rows,
            "sent": self.sent,
            "delivered": self.delivered,
            "skipped": self.skipped,
            "retried": self.retried,
            "dead_lettered": self.dead_lettered,
            "open_dead_letters": self.open_dead_letters,
            "batches": self.batches,
            "latency_s": round(self.elapsed_s, 4),
            "batch_latency_p50_s": round(self.batch_latency_p50_s, 4),
            "batch_latency_max_s": round(self.batch_latency_max_s, 4),
            "records_per_s": self.records_per_s,
            "watermark": self.watermark,
            "caught_up_windows": len(self.caught_up),
        }


@dataclass
class _Totals:
    """Sums of the per-batch delivery stats of one window."""

    rows: int = 0
    sent: int = 0
    delivered: int = 0
    skipped: int = 0
    retried: int = 0
    dead_lettered: int = 0
    batches: int = 0
    p50s: list[float] = field(default_factory=list)
    latency_max: float = 0.0
    delivered_by_op: Counter[str] = field(default_factory=Counter)

    def add(
        self,
        stats: DeliveryStats,
        results: Sequence[DeliveryResult],
        rows: Sequence[Mapping[str, Any]],
    ) -> None:
        op_of = {row["_lsn"]: row["_op"] for row in rows}
        self.delivered_by_op.update(op_of[r.lsn] for r in results if r.status == "delivered")
        self.rows += stats.rows
        self.sent += sum(r.attempts > 0 for r in results)
        self.delivered += stats.delivered
        self.skipped += stats.skipped
        self.retried += stats.retried_attempts
        self.dead_lettered += stats.dead_lettered
        self.batches += stats.batches
        if stats.batches:
            self.p50s.append(stats.batch_latency_p50_s)
        self.latency_max = max(self.latency_max, stats.batch_latency_max_s)


# -- reading the window ------------------------------------------------------------------------


def read_rows(path: Path, batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """The window's change rows, `batch_size` at a time, as Python values (Decimal, UTC)."""
    if not path.exists():
        raise DeliveryOrderError(f"{path} is missing: export the window to Parquet first")
    for batch in parquet_batches(path, batch_size):
        yield batch.to_pylist()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _completion(destination: str, window: Window, parquet: Path, rows: int) -> CompletedExport:
    """The record that says: this destination has this window (the file it was read from)."""
    return CompletedExport(
        consumer=destination,
        window_key=window.key,
        lo=window.lo,
        hi=window.hi,
        rows=rows,
        bytes=parquet.stat().st_size,
        sha256=_sha256(parquet),
        path=str(parquet),
    )


# -- one window --------------------------------------------------------------------------------


def _prior(images: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Mapping[str, Any]]:
    """Prior images for the mapping: a subscription absent or deleted has no previous state."""
    return {ident: image for ident, image in images.items() if image is not None}


def _dead_letters(
    client: DeliveryClient,
    rows: Sequence[ChangeRow],
    results: Sequence[DeliveryResult],
    window_key: str,
    prior: Mapping[str, Mapping[str, Any]],
) -> list[NewDeadLetter]:
    """The dead letters of one batch, with the exact units that were (or would be) sent."""
    items = {
        item.lsn: item for item in client.prepare(rows, window_key=window_key, prior_state=prior)
    }
    by_lsn = {row["_lsn"]: row for row in rows}
    return [
        NewDeadLetter(
            lsn=r.lsn,
            subscription_id=r.subscription_id,
            idempotency_key=r.idempotency_key or items[r.lsn].key,
            units=items[r.lsn].units,
            row=by_lsn[r.lsn],
            error=r.error or "not delivered",
            attempts=r.attempts,
        )
        for r in results
        if r.status == "dead_letter"
    ]


def _deliver_one(
    project: Project,
    destination: DestinationConfig,
    window: Window,
    holder: str,
    policy: Policy,
    client: DeliveryClient,
) -> WindowDeliveryOutcome:
    name, state = destination.name, project.state
    with lease(state, f"{name}:{window.key}", holder, wait_s=project.settings.lease_wait_s):
        if window.key in completed_keys(state, name, window.lo - 1):
            watermark = advance(project.watermarks, state, name)
            return WindowDeliveryOutcome(name, window, "already_delivered", watermark)
        started = time.monotonic()
        parquet = project.file_path("parquet", window.key)
        accounting = destination.kind == "accounting"
        prior = _prior(prior_images(project.source, window)) if accounting else {}
        open_before = {
            d.lsn for d in list_dead_letters(state, name, status="open", window_key=window.key)
        }
        totals = _Totals()
        letters: list[NewDeadLetter] = []
        got_through: list[DeliveryResult] = []
        for rows in read_rows(parquet, project.settings.read_batch_size):
            report = deliver(
                rows,
                client,
                window_key=window.key,
                batch_size=destination.batch_size,
                max_concurrency=destination.max_concurrency,
                prior_state=prior if accounting else None,
            )
            totals.add(report.stats, report.results, rows)
            if report.dead_letters:
                letters.extend(_dead_letters(client, rows, report.results, window.key, prior))
            got_through.extend(
                r for r in report.results if r.lsn in open_before and r.status != "dead_letter"
            )
            if accounting:  # the next batch's previous images are this batch's last ones
                for row in rows:
                    if is_delete(row):
                        prior.pop(row["id"], None)
                    else:
                        prior[row["id"]] = row
        record_dead_letters(state, name, window.key, letters)
        resolve_delivered(state, name, got_through)
        still_open = open_windows(state, name).get(window.key, 0)
        if policy == "block" and still_open:
            status: Status = "blocked"
            watermark = project.watermarks.get(name)
        else:
            record_completed(state, _completion(name, window, parquet, totals.rows))
            status = "delivered"
            watermark = advance(project.watermarks, state, name)
        _record_metrics(project, name, window, parquet, totals, time.monotonic() - started)
        return WindowDeliveryOutcome(
            destination=name,
            window=window,
            status=status,
            watermark=watermark,
            rows=totals.rows,
            sent=totals.sent,
            delivered=totals.delivered,
            skipped=totals.skipped,
            retried=totals.retried,
            dead_lettered=totals.dead_lettered,
            open_dead_letters=still_open,
            batches=totals.batches,
            elapsed_s=time.monotonic() - started,
            batch_latency_p50_s=statistics.median(totals.p50s) if totals.p50s else 0.0,
            batch_latency_max_s=totals.latency_max,
        )


def _record_metrics(
    project: Project, name: str, window: Window, parquet: Path, totals: _Totals, seconds: float
) -> None:
    """The delivery's row in the metrics store, beside the formats' (after the watermark, so
    metrics never hold data back). Records are the rows the destination accepted; latency runs
    from each change's commit to the end of this delivery."""
    finished = dt.datetime.now(dt.UTC)
    p50, p95, top = file_latency_percentiles(parquet, finished)
    record_export_metrics(
        project.state,
        ExportMetrics(
            consumer=name,
            window_key=window.key,
            lsn_from=window.lo,
            lsn_to=window.hi,
            created=totals.delivered_by_op.get("c", 0),
            updated=totals.delivered_by_op.get("u", 0),
            deleted=totals.delivered_by_op.get("d", 0),
            bytes=0,  # not measured for HTTP deliveries
            duration_s=seconds,
            finished_at=finished,
            latency_p50_s=p50,
            latency_p95_s=p95,
            latency_max_s=top,
            retries=totals.retried,
            dead_letters=totals.dead_lettered,
        ),
    )


# -- ordering ----------------------------------------------------------------------------------


def pending_windows(
    project: Project, destination: str, before: Window | None = None
) -> list[Window]:
    """Registered windows past the destination's watermark it has not completed, in order
    (only those ending before `before`, if given)."""
    watermark = project.watermarks.get(destination)
    done = completed_keys(project.state, destination, watermark)
    return [
        w
        for w in list_windows(project.state, after_hi=watermark)
        if w.key not in done and (before is None or w.hi < before.lo)
    ]


def _exported(project: Project, window: Window) -> bool:
    return window.key in completed_keys(project.state, PARQUET_CONSUMER, window.lo - 1)


def _deliver_in_order(
    project: Project,
    destination: DestinationConfig,
    holder: str,
    policy: Policy,
    client: DeliveryClient,
    before: Window | None,
    wait_s: float,
    poll_s: float,
) -> list[WindowDeliveryOutcome]:
    """Deliver pending windows (before `before`, or all exported ones) oldest first.

    With `before`, every earlier window must get delivered, so a window not exported yet is
    waited for (`DeliveryOrderError` after `wait_s`) and a blocked one raises
    `DestinationBlocked`; without it (catch-up), delivery stops at the first window that is
    blocked or not exported yet.
    """
    name = destination.name
    outcomes: list[WindowDeliveryOutcome] = []
    deadline = time.monotonic() + wait_s
    while pending := pending_windows(project, name, before):
        first = pending[0]
        blocking = open_windows(project.state, name).get(first.key, 0)
        if policy == "block" and blocking:
            if before is None:
                break
            raise DestinationBlocked(blocked_message(name, first.key, blocking))
        if not _exported(project, first):
            if before is None:
                break
            if time.monotonic() >= deadline:
                raise DeliveryOrderError(
                    f"{name}: window {first.key} must be delivered before {before.key} but has"
                    f" not been exported yet (waited {wait_s:g}s); it is delivered when it is"
                )
            time.sleep(poll_s)
            continue
        outcome = _deliver_one(project, destination, first, holder, policy, client)
        outcomes.append(outcome)
        if outcome.status == "blocked":
            if before is None:
                break
            raise DestinationBlocked(blocked_message(name, first.key, outcome.open_dead_letters))
    return outcomes


def deliver_window(
    project: Project,
    destination: DestinationConfig,
    window: Window,
    holder: str,
    *,
    policy: Policy | None = None,
    client: DeliveryClient | None = None,
    wait_s: float | None = None,
    poll_s: float = 0.5,
) -> WindowDeliveryOutcome:
    """Deliver `window` (and, first, any earlier window the destination still lacks).

    Returns the outcome of `window` itself (status `blocked` when it has open dead letters under
    policy `block`). Raises `DestinationBlocked` when an earlier window is blocked, and
    `DeliveryOrderError` when an earlier window is not exported within `wait_s` (default: the
    settings' `lease_wait_s`). A client passed in is left open; one built here is closed.
    """
    chosen = policy or dead_letter_policy()
    init_dead_letters(project.state)
    own = client is None
    active = client or destination.client()
    try:
        earlier = _deliver_in_order(
            project,
            destination,
            holder,
            chosen,
            active,
            before=window,
            wait_s=project.settings.lease_wait_s if wait_s is None else wait_s,
            poll_s=poll_s,
        )
        outcome = _deliver_one(project, destination, window, holder, chosen, active)
        return replace(outcome, caught_up=tuple(o.window.key for o in earlier))
    finally:
        if own:
            active.close()


def catch_up(
    project: Project,
    destination: DestinationConfig,
    holder: str,
    *,
    policy: Policy | None = None,
    client: DeliveryClient | None = None,
) -> list[WindowDeliveryOutcome]:
    """Deliver every exported window the destination lacks, oldest first; stop at the first
    window that is blocked or not exported yet. Used after a replay unblocks a destination."""
    chosen = policy or dead_letter_policy()
    init_dead_letters(project.state)
    own = client is None
    active = client or destination.client()
    try:
        return _deliver_in_order(
            project, destination, holder, chosen, active, None, wait_s=0.0, poll_s=0.0
        )
    finally:
        if own:
            active.close()


def lagging_window(project: Project, names: Sequence[str]) -> Window | None:
    """The newest exported window some destination in `names` has not completed, or None.

    Delivering it delivers every earlier window the destination lacks first (in order), so one
    run catches a destination up after a failure outlasted its retries. A destination with open
    dead letters is skipped: it is blocked until an operator replays or discards them.
    """
    newest: Window | None = None
    for name in names:
        if open_windows(project.state, name):
            continue
        exported = completed_keys(project.state, PARQUET_CONSUMER, project.watermarks.get(name))
        behind = [w for w in pending_windows(project, name) if w.key in exported]
        if behind and (newest is None or behind[-1].hi > newest.hi):
            newest = behind[-1]
    return newest


# -- replay ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplaySummary:
    results: list[ReplayResult]
    completed_windows: list[tuple[str, str]]  # (destination, window key) completed by the replay
    caught_up: list[WindowDeliveryOutcome]  # windows delivered after the replay unblocked them
    watermarks: dict[str, int]

    @property
    def replayed(self) -> int:
        return sum(r.replayed for r in self.results)

    @property
    def failed(self) -> int:
        return sum(not r.replayed for r in self.results)


def replay_dead_letters(
    project: Project,
    destinations: DestinationsConfig,
    holder: str,
    *,
    destination: str | None = None,
    ids: Sequence[int] | None = None,
    policy: Policy | None = None,
    on_result: Callable[[ReplayResult], None] | None = None,
) -> ReplaySummary:
    """Replay open dead letters with their original keys, complete the windows that have no
    open dead letter left, then deliver the windows that waited behind them."""
    chosen = policy or dead_letter_policy()
    state = project.state
    init_dead_letters(state)
    clients: dict[str, DeliveryClient] = {}

    def client_for(name: str) -> DeliveryClient:
        if name not in clients:
            config = destinations.get(name)
            if config is None:
                raise DestinationConfigMissing(
                    f"dead letters of {name!r} cannot be replayed: {name} is not configured in"
                    f" {destinations.describe()}"
                )
            clients[name] = config.client()
        return clients[name]

    try:
        results = replay(state, client_for, destination=destination, ids=ids, on_result=on_result)
        touched = sorted({(r.letter.destination, r.letter.window_key) for r in results})
        completed = []
        for name, key in touched:
            if _finish_replayed_window(project, name, key, holder):
                completed.append((name, key))
        caught_up: list[WindowDeliveryOutcome] = []
        for name in sorted({name for name, _ in touched}):
            caught_up.extend(
                catch_up(
                    project,
                    destinations.destinations[name],
                    holder,
                    policy=chosen,
                    client=client_for(name),
                )
            )
        names = sorted({name for name, _ in touched})
        watermarks = {name: project.watermarks.get(name) for name in names}
        return ReplaySummary(results, completed, caught_up, watermarks)
    finally:
        for client in clients.values():
            client.close()


def _finish_replayed_window(project: Project, name: str, window_key: str, holder: str) -> bool:
    """Complete a window for `name` once it has no open dead letter (its other changes were
    delivered by the pass that recorded the dead letters). True if it was completed now."""
    state = project.state
    if open_windows(state, name).get(window_key, 0):
        return False
    window = find_window(state, window_key)
    if window is None:
        raise DeliveryOrderError(f"{name}: dead letters name window {window_key}, not registered")
    with lease(state, f"{name}:{window_key}", holder, wait_s=project.settings.lease_wait_s):
        if window_key in completed_keys(state, name, window.lo - 1):
            advance(project.watermarks, state, name)
            return False
        parquet = project.file_path("parquet", window_key)
        rows = pq.ParquetFile(parquet).metadata.num_rows
        record_completed(state, _completion(name, window, parquet, rows))
        advance(project.watermarks, state, name)
    return True
