"""Serve a sandbox system over real HTTP on 127.0.0.1, in a background thread or in the foreground.

Real sockets matter: connection pooling, keep-alive, resets and client timeouts only behave
like production when the client talks to a real server. Connections are HTTP/1.1 keep-alive;
a `reset` fault closes the socket with SO_LINGER 0 so the client sees a TCP reset.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from subscription_export.sandbox.base import SandboxSystem
from subscription_export.sandbox.faults import FaultPlan
from subscription_export.sandbox.messages import Request
from subscription_export.sandbox.systems import SYSTEMS, make_system

log = logging.getLogger(__name__)

IDLE_CONNECTION_TIMEOUT_S = 30.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not block shutdown
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], system: SandboxSystem) -> None:
        self.system = system
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            open_now = list(self._connections)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("sandbox %s: error serving %s", self.system.name, client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_CONNECTION_TIMEOUT_S
    # Headers and body go out in separate writes; with Nagle's algorithm on, a keep-alive
    # client waits for the delayed ACK (~40 ms) on every answer.
    disable_nagle_algorithm = True
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) < length:  # the client went away mid-request: never process a partial one
            self.close_connection = True
            return
        url = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=url.path,
            query=dict(parse_qsl(url.query)),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        try:
            response = self.server.system.handle(request)
        except Exception:
            log.exception(
                "sandbox %s crashed on %s %s", self.server.system.name, self.command, self.path
            )
            self._answer(500, b'{"error":"internal"}', (("Content-Type", "application/json"),))
            return
        if response.drop:
            self._reset()
            return
        self._answer(response.status, response.body, response.headers)

    def _answer(self, status: int, body: bytes, headers: tuple[tuple[str, str], ...]) -> None:
        try:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client gave up (e.g. its timeout fired first)
            self.close_connection = True

    def _reset(self) -> None:
        """Abort the connection so the client sees a reset, not an answer."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("sandbox %s: " + format, self.server.system.name, *args)


class SandboxServer:
    """One system on `host:port` (port 0 picks a free one) served from a daemon thread."""

    def __init__(self, system: SandboxSystem, host: str = "127.0.0.1", port: int = 0) -> None:
        self.system = system
        self._httpd = _Server((host, port), system)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://{host}:{self.port}"

    def start(self) -> SandboxServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"sandbox-{self.system.name}-{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_in_foreground(self) -> None:
        """Serve on the calling thread until interrupted, then shut down."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self.system.stop()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.close_connections()
        self._httpd.server_close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextlib.contextmanager
def running_sandbox(
    names: tuple[str, ...] = tuple(SYSTEMS),
    *,
    faults: FaultPlan | None = None,
    host: str = "127.0.0.1",
) -> Iterator[dict[str, SandboxServer]]:
    """Start several systems on free ports (each with its own copy of `faults`)."""
    servers: dict[str, SandboxServer] = {}
    try:
        for name in names:
            plan = FaultPlan.from_json(faults.to_json()) if faults else None
            servers[name] = SandboxServer(make_system(name, faults=plan), host=host).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def serve_forever(
    system: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    faults: FaultPlan | None = None,
) -> None:
    """Serve one system in the foreground until interrupted (the CLI `sandbox serve`).

    SIGTERM (what process managers send) stops it like Ctrl-C does.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    server = SandboxServer(make_system(system, faults=faults), host=host, port=port)
    log.info("sandbox %s listening on %s", system, server.url)
    server.serve_in_foreground()
