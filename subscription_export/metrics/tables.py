"""The dashboard's HTML tables and the text formatting they share (every text escaped)."""

from __future__ import annotations

import datetime as dt
import html

from subscription_export.metrics.charts import consumer_kind, formats_first
from subscription_export.metrics.store import DashboardData


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def utc_text(moment: dt.datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def pct(rate: float) -> str:
    return f"{rate * 100:.2f}%"


def table(headers: list[str], rows: list[list[str]], cls: str, empty: str) -> str:
    """Cells must already be escaped; headers are escaped here."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="empty">{esc(empty)}</td></tr>'
    else:
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def consumers_table(data: DashboardData) -> str:
    """One row per consumer. Bytes are summed for formats only: deliveries to destinations go
    over HTTP and record `bytes=0` (not measured), which would read as "nothing sent"."""
    rows = [
        [
            esc(c.consumer),
            consumer_kind(c.consumer),
            num(c.watermark),
            num(c.lag),
            num(c.windows),
            num(c.records),
            num(c.bytes)
            if consumer_kind(c.consumer) == "format"
            else '<span title="not measured for HTTP deliveries">—</span>',
            pct(c.error_rate),
            num(c.retries),
            num(c.dead_letters),
            num(c.quarantined),
            num(c.last_latency_p95_s, 2),
            esc(utc_text(c.last_finished_at)),
        ]
        for c in formats_first(data.consumers, lambda c: c.consumer)
    ]
    headers = [
        "consumer",
        "kind",
        "watermark",
        "lag (LSNs)",
        "windows",
        "records",
        "bytes written",
        "error rate",
        "retries",
        "dead letters",
        "quarantined",
        "last p95 (s)",
        "last finished",
    ]
    return table(headers, rows, "consumers", "no consumers yet")


def capture_table(data: DashboardData, recent: int = 10) -> str:
    rows = [
        [
            esc(utc_text(s.sampled_at)),
            num(s.last_lsn),
            num(s.lag_s, 2),
            num(s.waiting),
            num(s.horizon_stall_s, 2),
            esc(utc_text(s.last_change_at)),
            esc(utc_text(s.last_sequenced_at)),
        ]
        for s in reversed(data.capture[-recent:])
    ]
    headers = [
        "sampled",
        "last LSN",
        "capture lag (s)",
        "waiting behind horizon",
        "horizon stall (s)",
        "newest change",
        "newest sequenced change",
    ]
    return table(headers, rows, "capture", "no capture samples yet")


_RECONCILE_OUTCOMES = (
    "merged",
    "resolved",
    "queued",
    "echo",
    "no_change",
    "already_applied",
    "invalid",
)


def reconcile_table(data: DashboardData) -> str:
    """Remote edits brought back per system, by outcome (`queued`: conflicts for a person).
    Outcomes this page does not know yet get a column too, after the known ones."""
    seen = {o for counts in data.reconcile.values() for o in counts}
    outcomes = [*_RECONCILE_OUTCOMES, *sorted(seen - set(_RECONCILE_OUTCOMES))]
    rows = [
        [esc(system), *(num(counts.get(o, 0)) for o in outcomes)]
        for system, counts in data.reconcile.items()
    ]
    return table(["system", *outcomes], rows, "reconcile", "no reconcile runs yet")


def pushes_table(data: DashboardData) -> str:
    """Merged records still to push per system (a push waits for the window delivery, or is
    retried until `push_max_attempts`, then it is a dead letter)."""
    rows = [[esc(system), num(n)] for system, n in data.pending_pushes.items()]
    return table(["system", "pending pushes"], rows, "pushes", "no pending pushes")
