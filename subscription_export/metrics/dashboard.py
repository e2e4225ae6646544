"""The export dashboard: one self-contained HTML file, and a tiny HTTP server that keeps it fresh.

The page must work where the exports run - often offline or behind a firewall - and be safe to
mail around, so it carries everything inline: the vendored uPlot chart library (MIT, see
`assets/uPlot.LICENSE`), its CSS, the data and a few lines of script. A Content-Security-Policy
allows only those exact scripts (by hash) and no network access at all, so even a consumer name
that slipped past escaping could not run code or call home.

The data goes in as JSON in a `<script type="application/json">` block and is read with
`JSON.parse`; every text shown in HTML goes through `html.escape`, and chart labels are set by
uPlot via `textContent`. After plotting, the script copies what uPlot actually holds into
`window.__DASHBOARD__.rendered` and `data-rendered-points`, so a browser test compares the
pixels' source data with the store, not with what the server meant to send.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import html
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any, TypeVar
from urllib.parse import urlsplit

from subscription_export.core.codec import dumps
from subscription_export.formats.writers import FORMATS
from subscription_export.metrics.store import DashboardData, ExportMetrics

log = logging.getLogger(__name__)

CHARTS = ("volume", "throughput", "latency", "error_rate")


def consumer_kind(consumer: str) -> str:
    """The consumer's kind: "format" for the file exports (parquet, csv, jsonl), else
    "destination".

    The store does not say which is which; every consumer other than the formats is a delivery to
    a configured destination (ERP, CRM, accounting, under whatever name the config gives it).
    Destinations record `bytes=0` (not measured for HTTP), so bytes are shown for formats only.
    """
    return "format" if consumer in FORMATS else "destination"


# Distinct on white and for common colour blindness (Okabe-Ito, then a few extras).
_PALETTE = (
    "#0072B2",
    "#D55E00",
    "#009E73",
    "#CC79A7",
    "#E69F00",
    "#56B4E9",
    "#000000",
    "#7f7f7f",
    "#8c564b",
    "#bcbd22",
)


_T = TypeVar("_T")


def _formats_first(items: Iterable[_T], name: Callable[[_T], str]) -> list[_T]:
    """Formats, then destinations, each group in its given order."""
    return sorted(items, key=lambda item: consumer_kind(name(item)) != "format")


@dataclass(frozen=True)
class Series:
    label: str
    consumer: str
    values: list[float | None]  # aligned with the chart's x; None where the consumer has no point
    dashed: bool = False
    kind: str = "format"  # or "destination" (see `consumer_kind`)


@dataclass(frozen=True)
class Chart:
    """One chart as plotted: x is each export's finished_at (epoch seconds, UTC)."""

    name: str
    title: str
    unit: str
    x: list[float]
    series: list[Series]
    note: str = ""  # a line under the title

    @property
    def points(self) -> int:
        return sum(v is not None for s in self.series for v in s.values)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "unit": self.unit,
            "points": self.points,
            "x": self.x,
            "series": [
                {
                    "label": s.label,
                    "consumer": s.consumer,
                    "kind": s.kind,
                    "values": s.values,
                    "dashed": s.dashed,
                }
                for s in self.series
            ],
        }


_Metric = Callable[[ExportMetrics], float | None]


def _chart(
    name: str,
    title: str,
    unit: str,
    exports: list[ExportMetrics],
    consumers: list[str],
    metrics: list[tuple[str, _Metric, bool]],
    note: str = "",
) -> Chart:
    """One x entry per export (so two exports finishing in the same microsecond both show), and
    per consumer and metric a series that has a value only at that consumer's exports."""
    x = [e.finished_at.timestamp() for e in exports]
    series = []
    for consumer in consumers:
        for suffix, metric, dashed in metrics:
            values = [metric(e) if e.consumer == consumer else None for e in exports]
            label = f"{consumer} {suffix}" if suffix else consumer
            series.append(Series(label, consumer, values, dashed, consumer_kind(consumer)))
    return Chart(name, title, unit, x, series, note)


def build_charts(data: DashboardData) -> dict[str, Chart]:
    """The four charts, from the store's rows as loaded (oldest first).

    Every chart has one series per consumer, formats first, then destinations (each group in
    order of first appearance): all four measure rows and time, which formats and destinations
    both report. Bytes, which deliveries do not measure, are not charted.
    """
    exports = data.exports
    consumers = _formats_first(dict.fromkeys(e.consumer for e in exports), lambda c: c)
    return {
        "volume": _chart(
            "volume",
            "Records per window",
            "records",
            exports,
            consumers,
            [("", lambda e: e.records, False)],
            "Rows, not bytes: formats count rows written to their files, destinations rows the"
            " system accepted (deliveries do not measure bytes).",
        ),
        "throughput": _chart(
            "throughput",
            "Throughput",
            "records/s",
            exports,
            consumers,
            [("", lambda e: e.rows_per_s, False)],
        ),
        "latency": _chart(
            "latency",
            "End-to-end latency (commit → finished)",
            "seconds",
            exports,
            consumers,
            [("p50", lambda e: e.latency_p50_s, False), ("p95", lambda e: e.latency_p95_s, True)],
        ),
        "error_rate": _chart(
            "error_rate",
            "Error rate (errors / (records + errors))",
            "%",
            exports,
            consumers,
            [("", lambda e: e.error_rate, False)],
        ),
    }


@functools.cache
def _asset(name: str) -> str:
    text = (files("subscription_export.metrics") / "assets" / name).read_text("utf-8")
    if "</script" in text.lower() or "</style" in text.lower():
        raise ValueError(f"asset {name} cannot be inlined: it contains a closing tag")
    return text


def _script_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _json_for_html(value: object) -> str:
    """JSON that cannot end its <script> block or open a comment, whatever strings it holds."""
    text = dumps(value, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _utc_text(moment: dt.datetime | None) -> str:
    return "—" if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _num(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}"


def _pct(rate: float) -> str:
    return f"{rate * 100:.2f}%"


def _table(headers: list[str], rows: list[list[str]], cls: str, empty: str) -> str:
    """Cells must already be escaped; headers are escaped here."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    if not rows:
        body = f'<tr><td colspan="{len(headers)}" class="empty">{_e(empty)}</td></tr>'
    else:
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _consumers_table(data: DashboardData) -> str:
    """One row per consumer. Bytes are summed for formats only: deliveries to destinations go
    over HTTP and record `bytes=0` (not measured), which would read as "nothing sent"."""
    written: dict[str, int] = {}
    for e in data.exports:
        written[e.consumer] = written.get(e.consumer, 0) + e.bytes
    rows = [
        [
            _e(c.consumer),
            consumer_kind(c.consumer),
            _num(c.watermark),
            _num(c.lag),
            _num(c.windows),
            _num(c.records),
            _num(written.get(c.consumer, 0))
            if consumer_kind(c.consumer) == "format"
            else '<span title="not measured for HTTP deliveries">—</span>',
            _pct(c.error_rate),
            _num(c.retries),
            _num(c.dead_letters),
            _num(c.quarantined),
            _num(c.last_latency_p95_s, 2),
            _e(_utc_text(c.last_finished_at)),
        ]
        for c in _formats_first(data.consumers, lambda c: c.consumer)
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
    return _table(headers, rows, "consumers", "no consumers yet")


def _capture_table(data: DashboardData, recent: int = 10) -> str:
    rows = [
        [
            _e(_utc_text(s.sampled_at)),
            _num(s.last_lsn),
            _num(s.lag_s, 2),
            _num(s.waiting),
            _num(s.horizon_stall_s, 2),
            _e(_utc_text(s.last_change_at)),
            _e(_utc_text(s.last_sequenced_at)),
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
    return _table(headers, rows, "capture", "no capture samples yet")


_RECONCILE_OUTCOMES = (
    "merged",
    "resolved",
    "queued",
    "echo",
    "no_change",
    "already_applied",
    "invalid",
)


def _reconcile_table(data: DashboardData) -> str:
    """Remote edits brought back per system, by outcome (`queued`: conflicts for a person).
    Outcomes this page does not know yet get a column too, after the known ones."""
    seen = {o for counts in data.reconcile.values() for o in counts}
    outcomes = [*_RECONCILE_OUTCOMES, *sorted(seen - set(_RECONCILE_OUTCOMES))]
    rows = [
        [_e(system), *(_num(counts.get(o, 0)) for o in outcomes)]
        for system, counts in data.reconcile.items()
    ]
    return _table(["system", *outcomes], rows, "reconcile", "no reconcile runs yet")


def _cards(data: DashboardData) -> str:
    latest = data.capture[-1] if data.capture else None
    cards = [
        ("last LSN", _num(data.last_lsn), "last-lsn", False),
        ("open dead letters", _num(data.open_dead_letters), "open-dead-letters", True),
        ("open conflicts", _num(data.open_conflicts), "open-conflicts", True),
        ("capture lag (s)", _num(latest.lag_s if latest else None, 2), "capture-lag", False),
    ]
    return "".join(
        f'<div class="card{" alert" if alert and value not in ("0", "—") else ""}"'
        f' data-card="{key}"><div class="value">{_e(value)}</div>'
        f'<div class="label">{_e(label)}</div></div>'
        for label, value, key, alert in cards
    )


def _chart_blocks(charts: dict[str, Chart]) -> str:
    return "".join(
        f'<section class="chart" data-chart="{name}" data-points="{chart.points}">'
        f"<h2>{_e(chart.title)}</h2>"
        + ("" if chart.points else '<p class="empty">no exports recorded yet</p>')
        + '<div class="plot"></div>'
        + (f'<p class="note">{_e(chart.note)}</p>' if chart.note else "")
        + "</section>"
        for name, chart in charts.items()
    )


_STYLE = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1b1f24;
background:#f6f8fa}
header{background:#1b1f24;color:#fff;padding:12px 24px}
header h1{font-size:18px;margin:0}
header .meta{color:#c9d1d9;font-size:12px}
main{padding:16px 24px;max-width:1400px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin-bottom:16px}
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 16px;min-width:150px}
.card .value{font-size:22px;font-weight:600}
.card .label{color:#57606a;font-size:12px}
.card.alert{border-color:#cf222e}.card.alert .value{color:#cf222e}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(560px,1fr));gap:16px}
.chart{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px;min-width:0}
.chart h2,h2{font-size:15px;margin:4px 0 8px}
.tables table{border-collapse:collapse;background:#fff;margin:8px 0 20px;width:100%}
.tables th,.tables td{border:1px solid #d0d7de;padding:4px 8px;text-align:right;
white-space:nowrap}
.tables th{background:#f0f3f6;white-space:normal;vertical-align:bottom}
.tables td:first-child,.tables th:first-child{text-align:left;white-space:normal;
overflow-wrap:anywhere;min-width:7em}
.empty{color:#57606a;font-style:italic;text-align:left}
.note{color:#57606a;font-size:12px;margin:4px 0}
.tables{overflow-x:auto}
"""

# Reads the JSON block, draws each [data-chart] with uPlot, then records what uPlot holds: the
# plotted data and, after each draw, every axis's ticks (value, label, pixel position and label
# width), so a browser test can check the labels' range and that they do not overlap.
_SCRIPT = """
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("dashboard-data").textContent);
  D.rendered = {};
  window.__DASHBOARD__ = D;
  var NICE = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1];
  // Error rates are fractions in [0, 1]. The axis runs from 0 to the next nice step above the
  // highest rate (0-1% when all are 0), never past 1 (100%).
  function rateRange(u, min, max) {
    if (!(max > 0)) { return [0, 0.01]; }
    for (var i = 0; i < NICE.length; i++) { if (NICE[i] >= max * 1.05) { return [0, NICE[i]]; } }
    return [0, 1];
  }
  function percent(v, digits) { return (v * 100).toFixed(digits) + "%"; }
  function rateTicks(u, splits, axis, space, incr) {
    var digits = Math.max(0, Math.min(3, Math.ceil(-Math.log10(incr * 100) - 1e-9)));
    return splits.map(function (v) { return v == null ? null : percent(v, digits); });
  }
  // UTC times as short as the tick spacing allows; the date goes on a second line, on the
  // first tick and where the day changes.
  function timeTicks(u, splits, axis, space, incr) {
    var day = null;
    return splits.map(function (ts) {
      if (ts == null) { return null; }
      var iso = new Date(ts * 1e3).toISOString(), date = iso.slice(5, 10);
      var time = incr >= 86400 ? "" : iso.slice(11, incr >= 60 ? 16 : incr >= 1 ? 19 : 22);
      var label = time === "" ? date : date !== day ? time + "\\n" + date : time;
      day = date;
      return label;
    });
  }
  var measure = document.createElement("canvas").getContext("2d");
  function ticks(u) {
    return u.axes.map(function (a) {
      var labels = (a._values || []).map(function (l) { return l == null ? null : String(l); });
      measure.font = a.font[0].replace(/[0-9.]+px/, a.font[2] + "px");
      return { scale: a.scale, values: (a._splits || []).slice(), labels: labels,
        pos: (a._splits || []).map(function (v) { return u.valToPos(v, a.scale); }),
        widths: labels.map(function (l) { return l == null ? 0 : Math.max.apply(null,
          l.split("\\n").map(function (line) { return measure.measureText(line).width; })); }) };
    });
  }
  function utc(ts) { return uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"); }
  function build(el) {
    var name = el.getAttribute("data-chart"), c = D.charts[name], rate = c.unit === "%";
    var target = el.querySelector(".plot");
    var series = [{ label: "finished (UTC)" }];
    c.series.forEach(function (s) {
      series.push({ label: s.label, stroke: D.colors[s.consumer], width: 2, spanGaps: true,
        dash: s.dashed ? [6, 4] : undefined, points: { show: true, size: 5 },
        value: rate ? function (u, v) { return v == null ? "--" : percent(v, 2); } : undefined });
    });
    var y = { label: rate ? "error rate" : c.unit, size: 70 };
    if (rate) { y.values = rateTicks; }
    var x = { values: timeTicks, space: 90, size: 56 };
    var scales = { x: { time: true } };
    // Counts, rates and latencies from 0 (or below, for a negative skewed latency), so a dip
    // in one consumer's line is not magnified by an axis starting near its minimum.
    scales.y = { range: rate ? rateRange : function (u, min, max) {
      return uPlot.rangeNum(Math.min(0, min), max, 0.1, true); } };
    var opts = { width: Math.max(320, target.clientWidth), height: 260, tzDate: utc,
      series: series, axes: [x, y], scales: scales, legend: { live: false },
      padding: [12, 40, 0, 0],
      hooks: { draw: [function (u) {
        if (D.rendered[name]) { D.rendered[name].axes = ticks(u); } }] } };
    var u = new uPlot(opts, [c.x].concat(c.series.map(function (s) { return s.values; })), target);
    var plotted = u.data.map(function (a) { return Array.prototype.slice.call(a); });
    var points = 0;
    plotted.slice(1).forEach(function (a) {
      a.forEach(function (v) { if (v != null) { points += 1; } }); });
    el.setAttribute("data-rendered-points", String(points));
    D.rendered[name] = { points: points, data: plotted, axes: ticks(u),
      labels: u.series.slice(1).map(function (s) { return s.label; }) };
    return u;
  }
  var plots = Array.prototype.map.call(document.querySelectorAll("[data-chart]"), build);
  window.addEventListener("resize", function () {
    plots.forEach(function (u) {
      u.setSize({ width: Math.max(320, u.root.parentNode.clientWidth), height: 260 });
    });
  });
})();
"""


def render_dashboard(data: DashboardData, refresh_s: int | None = None) -> str:
    """The whole dashboard as one HTML document (no network needed to view it).

    `refresh_s` adds a meta refresh, for the served page; a saved file stays a snapshot.
    """
    charts = build_charts(data)
    consumers = _formats_first(dict.fromkeys(c.consumer for c in data.consumers), lambda c: c)
    colors = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(consumers)}
    payload = {
        "generated_at": data.generated_at,
        "last_lsn": data.last_lsn,
        "open_dead_letters": data.open_dead_letters,
        "open_conflicts": data.open_conflicts,
        "reconcile": data.reconcile,
        "colors": colors,
        "charts": {name: chart.as_dict() for name, chart in charts.items()},
    }
    library, script = _asset("uPlot.iife.min.js"), _SCRIPT
    csp = (
        "default-src 'none'; "
        f"script-src {_script_hash(library)} {_script_hash(script)}; "
        "style-src 'unsafe-inline'; img-src data:; connect-src 'none'; "
        "base-uri 'none'; form-action 'none'"
    )
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    since = f" · since {_e(_utc_text(data.since))}" if data.since else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_e(csp)}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
        "<title>subscription-export · exports</title>"
        f"<style>{_asset('uPlot.min.css')}</style><style>{_STYLE}</style></head><body>"
        "<header><h1>subscription-export · exports</h1>"
        f'<div class="meta">generated {_e(_utc_text(data.generated_at))}{since}'
        f" · {len(data.exports)} export(s) loaded · times in UTC</div></header><main>"
        f'<div class="cards">{_cards(data)}</div>'
        f'<div class="charts">{_chart_blocks(charts)}</div>'
        '<div class="tables"><h2>Consumers</h2>'
        f"{_consumers_table(data)}<h2>Capture</h2>{_capture_table(data)}"
        f"<h2>Remote edits by outcome</h2>{_reconcile_table(data)}</div></main>"
        '<script type="application/json" id="dashboard-data">'
        f"{_json_for_html(payload)}</script>"
        f"<script>{library}</script><script>{script}</script></body></html>\n"
    )


class _Handler(BaseHTTPRequestHandler):
    load: Callable[[], DashboardData]
    refresh_s: int

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                body = render_dashboard(self.load(), self.refresh_s)
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", body)
            elif path == "/data.json":
                self._send(HTTPStatus.OK, "application/json", self.load().to_json())
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", "not found\n")
        except Exception as exc:  # a broken state DB must show as an error page, not kill it
            log.exception("dashboard request %s failed", path)
            reason = f"cannot load dashboard data: {type(exc).__name__}: {exc}\n"
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, "text/plain; charset=utf-8", reason)

    def _send(self, status: HTTPStatus, content_type: str, body: str) -> None:
        raw = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s " + format, self.address_string(), *args)


def serve_dashboard(
    load: Callable[[], DashboardData],
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    refresh_s: int = 10,
    background: bool = False,
) -> ThreadingHTTPServer:
    """Serve `GET /` (fresh HTML, refreshing every `refresh_s`) and `GET /data.json`.

    Each request calls `load`, so the page always shows the store's current numbers. Port 0
    picks a free port (see `server.server_address`). With `background=True` the server runs in
    a daemon thread and is returned at once (call `shutdown()`); otherwise this blocks until
    interrupted. Binds to localhost by default: the page is unauthenticated.
    """
    handler = type(
        "DashboardHandler", (_Handler,), {"load": staticmethod(load), "refresh_s": refresh_s}
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    if background:
        serve = functools.partial(server.serve_forever, poll_interval=0.1)  # quick shutdown()
        threading.Thread(target=serve, name="dashboard", daemon=True).start()
        return server
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return server
