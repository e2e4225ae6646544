"""A destination `base_url` with `user:password@` never shows its password: not in delivery
errors, not in the dead letters stored in the state database, not in `dead-letters list` /
`replay`, `status` or the dashboard (issue 12, item 13). Real HTTP: a local server answering
500 (requests puts the full URL, userinfo included, in `response.url`) and a closed port."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.db import engine_for
from subscription_export.core.settings import Settings
from subscription_export.delivery.config import ENV_PATH, load_destinations
from subscription_export.delivery.window import deliver_window
from subscription_export.runtime import Project
from subscription_export.source.demo_table import init_demo_source
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.delivery.test_window_delivery import export_all
from subscription_export_tests.helpers import insert, update, writer

SECRET = "hunter2pw"


class _Answer500(BaseHTTPRequestHandler):
    def _fail(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"error": "boom"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PUT = do_POST = do_DELETE = _fail

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer500)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _destinations(path: Path, urls: dict[str, str]) -> Path:
    lines = []
    for name, url in urls.items():
        lines += [
            f"[destinations.{name}]",
            f'base_url = "{url}"',
            f"[destinations.{name}.timeouts]",
            "connect_s = 1.0",
            "read_s = 2.0",
            f"[destinations.{name}.retry]",
            "max_attempts = 2",
            "base_delay_s = 0.001",
            "max_delay_s = 0.002",
            "total_s = 5",
            "",
        ]
    path.write_text("\n".join(lines))
    return path


def _state_text(state_url: str) -> str:
    """Every row of every table of the state database, as text."""
    engine = engine_for(state_url)
    meta = sa.MetaData()
    meta.reflect(engine)
    with engine.connect() as conn:
        return "\n".join(
            repr(row) for table in meta.sorted_tables for row in conn.execute(sa.select(table))
        )


def test_destination_passwords_are_never_printed_or_stored(
    tmp_path: Path, failing_server: int
) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    init_demo_source(engine_for(source, writer=True))
    settings = Settings(
        source_url=source,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_changes=1_000,
        window_max_age_s=0.0,
    )
    with writer(source).begin() as conn:
        insert(conn, "s1")
        insert(conn, "s2")
        update(conn, "s1", status="paused")
    project = Project(settings)
    (window,) = export_all(project)
    path = _destinations(
        tmp_path / "destinations.toml",
        {
            "erp": f"http://user:{SECRET}@127.0.0.1:{failing_server}",
            "crm": f"http://:{SECRET}@127.0.0.1:{_closed_port()}/api",
        },
    )
    config = load_destinations(path)
    errors = []
    for name in ("erp", "crm"):
        outcome = deliver_window(project, config.destinations[name], window, "test-holder")
        assert outcome.dead_lettered == 3, outcome
        errors += [str(outcome.metadata())]
    assert SECRET not in "\n".join(errors)
    stored = _state_text(settings.state_url)
    assert "HTTP 500" in stored and "Connection" in stored  # the errors are kept, masked
    assert SECRET not in stored

    env = {ENV_PATH: str(path)}
    shown = []
    for args in (
        ["dead-letters", "list"],
        ["dead-letters", "list", "--json"],
        ["dead-letters", "replay"],
        ["status"],
        ["status", "--json"],
        ["dashboard", "--out", "dash.html"],
    ):
        result = run_cli(args, settings, tmp_path, check=False, env=env)
        assert "Traceback" not in result.stderr, result.stderr
        shown.append(result.stdout + result.stderr)
    shown.append((tmp_path / "dash.html").read_text())
    assert "HTTP 500" in shown[0] + shown[1]
    assert SECRET not in "\n".join(shown)
    assert SECRET not in _state_text(settings.state_url)  # replay stored its errors masked
