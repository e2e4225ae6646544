"""The dashboard's tiny HTTP server: every request renders the store's current numbers.

`GET /` is the page (`metrics.page`, refreshing itself), `GET /data.json` the raw data, and
`GET /metrics` the same numbers for Prometheus (`metrics.prometheus`; totals over all time).
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from subscription_export.core.secrets import mask_in_text
from subscription_export.metrics.page import render_dashboard
from subscription_export.metrics.prometheus import exposition
from subscription_export.metrics.store import DashboardData

__all__ = ["render_dashboard", "serve_dashboard"]  # the CLI imports both from here

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    load: Callable[[], DashboardData]
    load_totals: Callable[[], DashboardData]
    refresh_s: int

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        try:
            if path in ("/", "/index.html"):
                body = render_dashboard(self.load(), self.refresh_s)
                self._send(HTTPStatus.OK, "text/html; charset=utf-8", body)
            elif path == "/data.json":
                self._send(HTTPStatus.OK, "application/json", self.load().to_json())
            elif path == "/metrics":
                content_type, raw = exposition(self.load_totals, self.headers.get("Accept", ""))
                self._send(HTTPStatus.OK, content_type, raw.decode("utf-8"))
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", "not found\n")
        except Exception as exc:  # a broken state DB must show as an error page, not kill it
            log.exception("dashboard request %s failed", path)
            reason = f"cannot load dashboard data: {type(exc).__name__}: {mask_in_text(str(exc))}\n"
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
    load_totals: Callable[[], DashboardData] | None = None,
) -> ThreadingHTTPServer:
    """Serve `GET /` (fresh HTML, refreshing every `refresh_s`) and `GET /data.json`.

    Each request calls `load`, so the page always shows the store's current numbers. Port 0
    picks a free port (see `server.server_address`). With `background=True` the server runs in
    a daemon thread and is returned at once (call `shutdown()`); otherwise this blocks until
    interrupted. Binds to localhost by default: the page is unauthenticated.
    `load_totals` feeds `GET /metrics` (default `load`): give it a loader over all time when
    `load` covers only recent hours, so Prometheus counters never shrink.
    """
    handler = type(
        "DashboardHandler",
        (_Handler,),
        {
            "load": staticmethod(load),
            "load_totals": staticmethod(load_totals or load),
            "refresh_s": refresh_s,
        },
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
