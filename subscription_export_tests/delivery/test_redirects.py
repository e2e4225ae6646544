"""A destination behind a front that answers 302 (an auth proxy sending to its login page, a
moved host): requests would follow it as a GET, and the GET's 200 (the login page) would pass
for the PUT or DELETE that never reached the system. Real sandbox ERP over HTTP behind the
front, which is a few lines of `http.server` standing for the proxy."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from subscription_export.delivery.clients import ErpClient
from subscription_export.sandbox.server import SandboxServer
from subscription_export.sandbox.systems import ErpSystem
from subscription_export_tests.delivery.factories import change_row, fast_policy

WINDOW = "00000000000000000001-00000000000000001000"


@contextmanager
def login_front(status: int = 302) -> Iterator[str]:
    """An auth proxy with no session for us: every request is sent (`status`) to its login
    page, which a GET gets as 200 HTML."""

    class Front(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            if self.command == "GET" and self.path == "/login":
                page = b"<html><body>Sign in</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)
                return
            self.send_response(status)
            self.send_header("Location", "/login")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_PUT = do_POST = do_DELETE = _answer

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("op", ["u", "d"])
@pytest.mark.parametrize("batch", [False, True])
def test_a_change_sent_to_a_login_page_is_a_dead_letter_not_delivered(batch: bool, op: str) -> None:
    erp = ErpSystem()
    with SandboxServer(erp) as server:
        with ErpClient(server.url, retry=fast_policy()) as direct:
            (created,) = direct.send_rows([change_row(1, "s1", "c")], window_key=WINDOW)
        assert created.status == "delivered" and "s1" in erp.records
        with (
            login_front() as front,
            ErpClient(front, retry=fast_policy(), batch=batch) as client,
        ):
            (result,) = client.send_rows([change_row(2, "s1", op, version=2)], window_key=WINDOW)
    assert erp.records["s1"]["version"] == 1  # the ERP never saw the change...
    assert result.status == "dead_letter", result  # ...so it is not delivered
    assert "HTTP 302" in (result.error or "") and "/login" in (result.error or ""), result
