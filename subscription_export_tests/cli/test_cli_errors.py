"""Failures as a user sees them: one line naming the real cause, the exit code the README
promises (0 ok, 1 run failure, 2 usage or configuration, 3 operator action), and values from
data printed as text (never rich markup, control characters escaped)."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings, replace
from subscription_export.delivery.retry import RetryableDeliveryError, send
from subscription_export.export.cut import cut_windows
from subscription_export.reconcile.sync_state import add_conflict, init_sync_state
from subscription_export.runtime import Project
from subscription_export.source.schema import init_source
from subscription_export.state.leases import try_acquire
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.helpers import insert, update, writer

HOSTILE = "[/red] \x1b[2J boom"
INT64_MAX = 2**63 - 1
TO_CSV = ["--format", "csv", "--out", "x"]


@pytest.fixture
def source_url(sqlite_url: str) -> str:
    """The CLI's error paths do not depend on the database: SQLite only."""
    return sqlite_url


def _stderr_lines(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in result.stderr.splitlines() if line.strip()]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _destinations(path: Path, base_url: str, name: str = "accounting") -> dict[str, str]:
    path.write_text(
        f'[destinations.{name}]\nbase_url = "{base_url}"\n'
        f"[destinations.{name}.retry]\nmax_attempts = 1\nbase_delay_s = 0\ntotal_s = 1\n"
    )
    return {"SUBSCRIPTION_EXPORT_DESTINATIONS": str(path)}


class _Refusing(BaseHTTPRequestHandler):
    """A remote system that refuses everything with a hostile error text."""

    def _refuse(self) -> None:
        body = HOSTILE.encode()
        self.send_response(400)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# Item 7: bad options: one line, exit 2.


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--window-max-changes", "0", "status"], "--window-max-changes"),
        (["export", "--from-lsn", "1", "--to-lsn", "2", "--format", "xml", "--out", "x"], "xml"),
        (["dashboard", "--serve", "--port", "abc"], "--port"),
        (["sandbox", "serve", "--system", "erp", "--port", "abc"], "--port"),
        (
            ["export", "--from-lsn", "1", "--to-lsn", str(INT64_MAX + 1), *TO_CSV],
            "--to-lsn",
        ),
        (
            ["export", "--from-lsn", "99999999999999999999", "--to-lsn", "1", *TO_CSV],
            "--from-lsn",
        ),
        (["export", "--from-lsn", "-1", "--to-lsn", "5", *TO_CSV], "--from-lsn"),
        (["conflicts", "show", str(INT64_MAX + 1)], "ID"),
        (["dead-letters", "discard", "--id", str(INT64_MAX + 1)], "--id"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(
    args: list[str], expected: str, settings: Settings, tmp_path: Path
) -> None:
    result = _run(args, settings, tmp_path, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = _stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


# Item 7: failures inside a Dagster run: one line per window, the real cause, exit 3 when an
# operator must act.


def test_held_lease_under_run_is_one_line_and_exit_3(settings: Settings, tmp_path: Path) -> None:
    with writer(settings.source_url).begin() as conn:
        for i in range(5):
            insert(conn, f"s{i}")
    settings = replace(settings, lease_wait_s=0.0)
    [window] = cut_windows(Project(settings)).new_windows
    try_acquire(Project(settings).state, f"parquet:{window.key}", "run 1234 (other host)")
    result = _run(["run", "--window", window.key], settings, tmp_path, check=False)
    assert result.returncode == 3, result.stderr
    [line] = _stderr_lines(result)
    assert f"window {window.key} failed" in line
    assert "is being exported by run 1234 (other host)" in line


def test_contract_refusal_under_run_is_one_line_and_exit_3(
    settings: Settings, tmp_path: Path
) -> None:
    settings = replace(settings, schema_contract="freeze")
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "a")
    _run(["run", "--once"], settings, tmp_path)  # registers the frozen schema
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE subscriptions ADD COLUMN discount_code TEXT"))
    init_source(engine)
    with engine.begin() as conn:
        update(conn, "a", discount_code="X")
    result = _run(["run", "--once"], settings, tmp_path, check=False)
    assert result.returncode == 3, result.stderr
    [line] = _stderr_lines(result)
    assert "'discount_code' was added" in line
    assert "Failure" not in line and "max_retries" not in line


def test_unwritable_export_dir_names_the_cause(settings: Settings, tmp_path: Path) -> None:
    """Root may write anywhere, so the export folder sits under a file (ENOTDIR)."""
    (tmp_path / "a_file").write_text("")
    settings = replace(settings, export_dir=tmp_path / "a_file" / "exports")
    with writer(settings.source_url).begin() as conn:
        insert(conn, "a")
    result = _run(["run", "--once"], settings, tmp_path, check=False)
    assert result.returncode == 1, result.stderr
    [line] = _stderr_lines(result)
    assert "not a directory" in line and str(tmp_path / "a_file") in line
    assert "max_retries" not in line


def test_disk_full_and_read_only_are_named() -> None:
    from subscription_export.core.causes import describe_os_error

    with pytest.raises(OSError) as full, open("/dev/full", "w") as sink:
        sink.write("x")  # a real write that fails with ENOSPC (when the file is closed)
    assert describe_os_error(full.value, Path("/exports/w.parquet")) == (
        "disk full (ENOSPC, No space left on device) writing /exports/w.parquet"
    )
    import errno
    import os

    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), "/mnt/ro/w.csv")
    assert describe_os_error(read_only).startswith("read-only file system (EROFS")
    assert "/mnt/ro/w.csv" in describe_os_error(read_only)


def test_destination_down_names_connection_refused_and_masks_the_password() -> None:
    import requests

    url = f"http://bob:s3cret@127.0.0.1:{_closed_port()}/api/x"
    with pytest.raises(RetryableDeliveryError) as raised:
        send(lambda: requests.post(url, json={}, timeout=2))
    message = str(raised.value)
    assert "connection refused" in message
    assert url.replace("s3cret", "***") in message
    assert "s3cret" not in message


def test_run_with_destination_down_names_the_cause(settings: Settings, tmp_path: Path) -> None:
    with writer(settings.source_url).begin() as conn:
        insert(conn, "a")
    env = _destinations(tmp_path / "d.toml", f"http://bob:s3cret@127.0.0.1:{_closed_port()}")
    result = _run(["run", "--once"], settings, tmp_path, check=False, env=env)
    assert result.returncode == 3, result.stderr  # open dead letters block: replay or discard
    # the failed window's cause, then the destination the dead letters hold back (every cycle)
    line, held = _stderr_lines(result)
    assert "connection refused" in line and "bob:***@127.0.0.1" in line
    assert held.startswith("accounting: 1 open dead letter(s), 1 record(s) waiting"), held
    assert "s3cret" not in result.stdout + result.stderr
    letters = _run(["dead-letters", "list", "--json"], settings, tmp_path, env=env).stdout
    assert "connection refused" in letters and "s3cret" not in letters


# Item 12: values from data are printed as text.


def _assert_shown(text: str) -> None:
    assert "MarkupError" not in text and "Traceback" not in text
    assert "\x1b" not in text
    assert "[/red]" in text and "\\x1b[2J" in text


def test_remote_error_text_is_printed_as_text(
    settings: Settings, tmp_path: Path, hostile_server: str
) -> None:
    with writer(settings.source_url).begin() as conn:
        insert(conn, "a")
    env = _destinations(tmp_path / "d.toml", hostile_server)
    ran = _run(["run", "--once"], settings, tmp_path, check=False, env=env)
    assert ran.returncode == 3, ran.stderr
    _assert_shown(ran.stderr)
    listed = _run(["dead-letters", "list"], settings, tmp_path, env=env)
    _assert_shown(listed.stdout)
    replayed = _run(["dead-letters", "replay"], settings, tmp_path, check=False, env=env)
    assert replayed.returncode == 1, replayed.stderr
    _assert_shown(replayed.stdout + replayed.stderr)
    status = _run(["status"], settings, tmp_path, env=env)
    assert "\x1b" not in status.stdout + status.stderr


def test_reconcile_prints_a_remote_error_as_text(
    settings: Settings, tmp_path: Path, hostile_server: str
) -> None:
    env = _destinations(tmp_path / "d.toml", hostile_server, name="erp")
    result = _run(["reconcile"], settings, tmp_path, check=False, env=env)
    assert result.returncode == 1, result.stderr
    _assert_shown(result.stdout + result.stderr)


def test_conflict_values_are_printed_as_text(settings: Settings, tmp_path: Path) -> None:
    state = Project(settings).state
    init_sync_state(state)
    moment = dt.datetime.now(dt.UTC)
    with state.begin() as conn:
        conflict_id = add_conflict(
            conn,
            destination="erp",
            subscription_id=f"s1{HOSTILE}",
            strategy="manual",
            fields=["currency"],
            base={"id": "s1", "currency": "EUR"},
            base_log_id=1,
            local={"id": "s1", "currency": "[/red]"},
            local_changed_at=moment,
            remote={"id": "s1", "currency": "\x1b[2J"},
            remote_changed_at=moment,
            remote_version=2,
            cursor=1,
        )
    shown = _run(["conflicts", "show", str(conflict_id)], settings, tmp_path)
    _assert_shown(shown.stdout)
    listed = _run(["conflicts", "list"], settings, tmp_path)
    assert "\x1b" not in listed.stdout
    history = _run(["conflicts", "history", "--subscription", f"s1{HOSTILE}"], settings, tmp_path)
    _assert_shown(history.stdout)
    as_json = json.loads(
        _run(["conflicts", "show", str(conflict_id), "--json"], settings, tmp_path).stdout
    )
    assert as_json["subscription_id"] == f"s1{HOSTILE}"


def test_an_unfinished_snapshot_makes_run_say_so_and_exit_3(
    settings: Settings, tmp_path: Path
) -> None:
    """An `init` killed mid-snapshot left rows out of the stream: `run` must not report a clean
    success while its exports miss them."""
    from subscription_export.source.snapshot import restart_snapshot, run_snapshot

    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for i in range(5):
            insert(conn, f"s{i}")
    restart_snapshot(engine)
    partial = run_snapshot(engine, chunk_size=2, max_chunks=1)  # killed after one chunk
    assert not partial.finished
    result = _run(["run", "--once"], settings, tmp_path, check=False)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "snapshot of subscriptions unfinished (2 rows so far)" in result.stderr
    _run(["snapshot"], settings, tmp_path)
    again = _run(["run", "--once"], settings, tmp_path, check=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "unfinished" not in again.stderr


def test_status_shows_an_unfinished_snapshot_per_table(settings: Settings, tmp_path: Path) -> None:
    """`status` says what `run` says: the table's snapshot is unfinished, with its rows so far
    and the command that finishes it; `--json` carries the progress per table."""
    from subscription_export.source.snapshot import restart_snapshot, run_snapshot

    engine = writer(settings.source_url)
    with engine.begin() as conn:
        for i in range(5):
            insert(conn, f"s{i}")
    restart_snapshot(engine)
    run_snapshot(engine, chunk_size=2, max_chunks=1)  # killed after one chunk
    Project(settings).state  # noqa: B018 - the state database `status` reads
    shown_text = _run(["status"], settings, tmp_path).stdout
    assert "snapshot of subscriptions unfinished (2 rows so far)" in shown_text, shown_text
    assert "run `subscription-export snapshot --table subscriptions`" in " ".join(
        shown_text.split()
    )
    report = json.loads(_run(["status", "--json"], settings, tmp_path).stdout)
    assert report["snapshots"]["subscriptions"] | {"started_at": None} == {
        "table": "subscriptions",
        "rows_done": 2,
        "chunks_done": 1,
        "last_key": '["s1"]',
        "started_at": None,
        "finished_at": None,
        "remaining": report["snapshots"]["subscriptions"]["remaining"],
        "finished": False,
    }
    _run(["snapshot"], settings, tmp_path)
    assert "unfinished" not in _run(["status"], settings, tmp_path).stdout
    finished = json.loads(_run(["status", "--json"], settings, tmp_path).stdout)
    assert finished["snapshots"]["subscriptions"]["finished"] is True


def test_a_destination_column_the_table_lacks_stops_reconcile_before_the_feed_is_read(
    settings: Settings, tmp_path: Path
) -> None:
    """The ERP is unreachable: the mapping mistake, not a connection error, is what is said
    (as the system's failure: other systems would still be reconciled, exit 1)."""
    (tmp_path / "destinations.toml").write_text(
        '[destinations.erp]\nbase_url = "http://127.0.0.1:9"\n'
        '[destinations.erp.columns]\namount = "fee"\n'
    )
    Project(settings).state  # noqa: B018 - the state database `reconcile` reads
    result = _run(["reconcile"], settings, tmp_path, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "destination 'erp': key 'columns.amount' = 'fee'" in lines[0], (
        result.stderr
    )
    assert "table 'subscriptions' has no column 'fee'" in lines[0]


def test_run_and_export_on_a_log_init_has_not_upgraded_say_to_run_init(
    sqlite_url: str, tmp_path: Path
) -> None:
    """A change log from before several tables (no `source_table`): one line naming `init`,
    not the raw SQL error of the first query that reads the column."""
    engine = writer(sqlite_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE subscription_change_log (id INTEGER PRIMARY KEY AUTOINCREMENT,"
            " lsn INTEGER UNIQUE, op TEXT NOT NULL CHECK (op IN ('c', 'u', 'd')),"
            " subscription_id TEXT NOT NULL, before TEXT, after TEXT, changed_at TEXT NOT NULL,"
            " origin TEXT NOT NULL DEFAULT 'app', schema_version INTEGER NOT NULL)"
        )
        conn.exec_driver_sql(
            "CREATE TABLE subscription_capture_schema (version INTEGER PRIMARY KEY,"
            " columns TEXT NOT NULL, installed_at TEXT NOT NULL DEFAULT '2026-01-01')"
        )
        conn.exec_driver_sql(
            "INSERT INTO subscription_change_log (lsn, op, subscription_id, after, changed_at,"
            " schema_version) VALUES (1, 'c', 's1', '{}', '2026-01-01T00:00:00Z', 1)"
        )
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
    )
    for args in (["run", "--once"], ["export", "--from-lsn", "1", "--to-lsn", "1", *TO_CSV]):
        result = _run(args, settings, tmp_path, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        [line] = _stderr_lines(result)
        assert "no source_table column" in line and "run `subscription-export init`" in line
        assert "OperationalError" not in line and "SELECT" not in line
