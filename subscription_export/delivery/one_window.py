"""One window's pass to one destination (steps 2-5 in `delivery.window`): under the window's
lease, send its Parquet rows batch by batch, record dead letters in one transaction, then
complete the window and advance the watermark unless policy `block` holds it back. The caller
(`ordering`) has delivered every earlier window first.
"""

from __future__ import annotations

import datetime as dt
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from upath import UPath

from subscription_export.core.errors import UnpublishedFileError
from subscription_export.delivery.clients import DeliveryClient, DeliveryResult
from subscription_export.delivery.columns import (
    ColumnMap,
    destination_table,
    project_columns,
    remember_table,
)
from subscription_export.delivery.config import DestinationConfig
from subscription_export.delivery.dead_letters import (
    NewDeadLetter,
    Policy,
    held_subscriptions,
    list_dead_letters,
    open_windows,
    record_dead_letters,
    resolve_delivered,
)
from subscription_export.delivery.dispatch import DeliveryReport, deliver
from subscription_export.delivery.mapping import ChangeRow
from subscription_export.delivery.outcome import DeliveryOrderError, Status, WindowDeliveryOutcome
from subscription_export.delivery.prior_state import mapping_prior_state, move_past
from subscription_export.delivery.rows import python_rows
from subscription_export.formats.parquet_batches import parquet_batches
from subscription_export.formats.writers import sha256_of
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
from subscription_export.state.windows import Window


@dataclass
class _Totals:
    """What the batches of one window did: summed stats, dead letters, late successes."""

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
    letters: list[NewDeadLetter] = field(default_factory=list)
    got_through: list[DeliveryResult] = field(default_factory=list)  # earlier dead letters

    def add(self, report: DeliveryReport, rows: Sequence[Mapping[str, Any]]) -> None:
        stats, results = report.stats, report.results
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

    def outcome(
        self,
        destination: str,
        window: Window,
        status: Status,
        watermark: int,
        open_dead_letters: int,
        elapsed_s: float,
    ) -> WindowDeliveryOutcome:
        return WindowDeliveryOutcome(
            destination=destination,
            window=window,
            status=status,
            watermark=watermark,
            rows=self.rows,
            sent=self.sent,
            delivered=self.delivered,
            skipped=self.skipped,
            retried=self.retried,
            dead_lettered=self.dead_lettered,
            open_dead_letters=open_dead_letters,
            batches=self.batches,
            elapsed_s=elapsed_s,
            batch_latency_p50_s=statistics.median(self.p50s) if self.p50s else 0.0,
            batch_latency_max_s=self.latency_max,
        )


def read_rows(
    path: Path | UPath, batch_size: int, columns: ColumnMap | None = None
) -> Iterator[list[dict[str, Any]]]:
    """The window's change rows, `batch_size` at a time, as Python values (Decimal, UTC); with
    `columns`, as rows of the destination's fields."""
    if not path.exists():
        raise DeliveryOrderError(f"{path} is missing: export the window to Parquet first")
    for batch in parquet_batches(path, batch_size):
        rows = python_rows(batch)
        yield rows if columns is None or columns.identity else list(map(columns.to_fields, rows))


def table_columns(project: Project, destination: DestinationConfig) -> ColumnMap:
    """The destination's table and columns, checked against the table before anything is sent."""
    return project_columns(project, destination)


def window_parquet(
    project: Project, window_key: str, destination: DestinationConfig
) -> Path | UPath:
    """The window's Parquet file of the destination's table once its manifest (written last)
    vouches for it; before that the window is not exported yet, which the caller retries like
    any out-of-order window."""
    try:
        return project.export_of(destination_table(project, destination), window_key)
    except UnpublishedFileError as exc:
        raise DeliveryOrderError(str(exc)) from None


def completion(
    destination: str, window: Window, parquet: Path | UPath, rows: int
) -> CompletedExport:
    """The record that says: this destination has this window (the file it was read from)."""
    return CompletedExport(
        consumer=destination,
        window_key=window.key,
        lo=window.lo,
        hi=window.hi,
        rows=rows,
        bytes=parquet.stat().st_size,
        sha256=sha256_of(parquet),
        path=str(parquet),
    )


def _dead_letters(
    client: DeliveryClient,
    rows: Sequence[ChangeRow],
    results: Sequence[DeliveryResult],
    window_key: str,
    prior: Mapping[str, Mapping[str, Any]] | None,
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


def _send_batches(
    project: Project,
    destination: DestinationConfig,
    window: Window,
    client: DeliveryClient,
    parquet: Path | UPath,
) -> _Totals:
    """Send the window's rows batch by batch, in LSN order; nothing is recorded yet."""
    open_before = {
        d.lsn
        for d in list_dead_letters(
            project.state, destination.name, status="open", window_key=window.key
        )
    }
    columns = table_columns(project, destination)
    accounting = destination.kind == "accounting"
    prior = mapping_prior_state(project.source, window, columns) if accounting else None
    # Per-record order: a subscription with an open dead letter of another window (or a push)
    # gets its changes held back behind it; this window's own are re-sent in LSN order.
    held = held_subscriptions(project.state, destination.name, except_window=window.key)
    totals = _Totals()
    for rows in read_rows(parquet, project.settings.read_batch_size, columns):
        report = deliver(
            rows,
            client,
            window_key=window.key,
            batch_size=destination.batch_size,
            max_concurrency=destination.max_concurrency,
            prior_state=prior,
            held=held,
        )
        held |= {r.subscription_id for r in report.dead_letters}
        totals.add(report, rows)
        if report.dead_letters:
            totals.letters.extend(_dead_letters(client, rows, report.results, window.key, prior))
        totals.got_through.extend(
            r for r in report.results if r.lsn in open_before and r.status != "dead_letter"
        )
        if prior is not None:
            move_past(prior, rows)
    return totals


def deliver_one(
    project: Project,
    destination: DestinationConfig,
    window: Window,
    holder: str,
    policy: Policy,
    client: DeliveryClient,
) -> WindowDeliveryOutcome:
    """Deliver `window` alone under its lease; see the module docstring for the steps."""
    name, state = destination.name, project.state
    settings = project.settings
    with lease(
        state, f"{name}:{window.key}", holder, settings.lease_wait_s, settings.lease_ttl_s
    ) as held:
        if window.key in completed_keys(state, name, window.lo - 1):
            watermark = advance(project.watermarks, state, name)
            return WindowDeliveryOutcome(name, window, "already_delivered", watermark)
        remember_table(project, destination)  # refuses a table switch nobody asked for
        started = time.monotonic()
        parquet = window_parquet(project, window.key, destination)
        totals = _send_batches(project, destination, window, client, parquet)
        held.check()  # a holder that lost its lease records nothing: the new holder does
        record_dead_letters(state, name, window.key, totals.letters)
        resolve_delivered(state, name, totals.got_through)
        still_open = open_windows(state, name).get(window.key, 0)
        if policy == "block" and still_open:
            status: Status = "blocked"
            watermark = project.watermarks.get(name)
        else:
            record_completed(state, completion(name, window, parquet, totals.rows))
            status = "delivered"
            watermark = advance(project.watermarks, state, name)
        _record_metrics(project, name, window, parquet, totals, time.monotonic() - started)
        elapsed = time.monotonic() - started
        return totals.outcome(name, window, status, watermark, still_open, elapsed)


def _record_metrics(
    project: Project,
    name: str,
    window: Window,
    parquet: Path | UPath,
    totals: _Totals,
    seconds: float,
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
            snapshot=totals.delivered_by_op.get("r", 0),
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
