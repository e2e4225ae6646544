"""The dashboard as one self-contained HTML document.

The page must work where the exports run - often offline or behind a firewall - and be safe to
mail around, so it carries everything inline: the vendored uPlot chart library (MIT, see
`assets/uPlot.LICENSE`), its CSS, our style and script (`assets/dashboard.css`,
`assets/dashboard.js`) and the data. A Content-Security-Policy allows only those exact scripts
(by hash) and no network access at all, so even a consumer name that slipped past escaping could
not run code or call home.

The data goes in as JSON in a `<script type="application/json">` block and is read with
`JSON.parse`; every text shown in HTML goes through `html.escape`, and chart labels are set by
uPlot via `textContent`. After plotting, the script copies what uPlot actually holds into
`window.__DASHBOARD__.rendered` and `data-rendered-points`, so a browser test compares the
pixels' source data with the store, not with what the server meant to send.
"""

from __future__ import annotations

import base64
import functools
import hashlib
from importlib.resources import files

from subscription_export.core.codec import dumps
from subscription_export.metrics.charts import Chart, build_charts, formats_first
from subscription_export.metrics.store import DashboardData
from subscription_export.metrics.tables import (
    capture_table,
    consumers_table,
    esc,
    num,
    pushes_table,
    reconcile_table,
    utc_text,
)

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


def _cards(data: DashboardData) -> str:
    latest = data.capture[-1] if data.capture else None
    cards = [
        ("last LSN", num(data.last_lsn), "last-lsn", False),
        ("open dead letters", num(data.open_dead_letters), "open-dead-letters", True),
        ("open conflicts", num(data.open_conflicts), "open-conflicts", True),
        ("pending pushes", num(sum(data.pending_pushes.values())), "pending-pushes", True),
        ("capture lag (s)", num(latest.lag_s if latest else None, 2), "capture-lag", False),
    ]
    return "".join(
        f'<div class="card{" alert" if alert and value not in ("0", "—") else ""}"'
        f' data-card="{key}"><div class="value">{esc(value)}</div>'
        f'<div class="label">{esc(label)}</div></div>'
        for label, value, key, alert in cards
    )


def _chart_blocks(charts: dict[str, Chart]) -> str:
    return "".join(
        f'<section class="chart" data-chart="{name}" data-points="{chart.points}">'
        f"<h2>{esc(chart.title)}</h2>"
        + ("" if chart.points else '<p class="empty">no exports recorded yet</p>')
        + '<div class="plot"></div>'
        + (f'<p class="note">{esc(chart.note)}</p>' if chart.note else "")
        + "</section>"
        for name, chart in charts.items()
    )


def render_dashboard(data: DashboardData, refresh_s: int | None = None) -> str:
    """The whole dashboard as one HTML document (no network needed to view it).

    `refresh_s` adds a meta refresh, for the served page; a saved file stays a snapshot.
    """
    charts = build_charts(data)
    consumers = formats_first(dict.fromkeys(c.consumer for c in data.consumers), lambda c: c)
    colors = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(consumers)}
    payload = {
        "generated_at": data.generated_at,
        "last_lsn": data.last_lsn,
        "open_dead_letters": data.open_dead_letters,
        "open_conflicts": data.open_conflicts,
        "reconcile": data.reconcile,
        "pending_pushes": data.pending_pushes,
        "colors": colors,
        "charts": {name: chart.as_dict() for name, chart in charts.items()},
    }
    library, script = _asset("uPlot.iife.min.js"), _asset("dashboard.js")
    csp = (
        "default-src 'none'; "
        f"script-src {_script_hash(library)} {_script_hash(script)}; "
        "style-src 'unsafe-inline'; img-src data:; connect-src 'none'; "
        "base-uri 'none'; form-action 'none'"
    )
    refresh = f'<meta http-equiv="refresh" content="{int(refresh_s)}">' if refresh_s else ""
    since = f" · since {esc(utc_text(data.since))}" if data.since else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{refresh}'
        "<title>subscription-export · exports</title>"
        f"<style>{_asset('uPlot.min.css')}</style><style>{_asset('dashboard.css')}</style></head><body>"
        "<header><h1>subscription-export · exports</h1>"
        f'<div class="meta">generated {esc(utc_text(data.generated_at))}{since}'
        f" · {len(data.exports)} export(s) loaded · times in UTC</div></header><main>"
        f'<div class="cards">{_cards(data)}</div>'
        f'<div class="charts">{_chart_blocks(charts)}</div>'
        '<div class="tables"><h2>Consumers</h2>'
        f"{consumers_table(data)}<h2>Capture</h2>{capture_table(data)}"
        f"<h2>Remote edits by outcome</h2>{reconcile_table(data)}"
        f"<h2>Pending pushes</h2>{pushes_table(data)}</div></main>"
        '<script type="application/json" id="dashboard-data">'
        f"{_json_for_html(payload)}</script>"
        f"<script>{library}</script><script>{script}</script></body></html>\n"
    )
