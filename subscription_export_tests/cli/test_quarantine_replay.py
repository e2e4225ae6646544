"""`quarantine replay` / `discard` (issue 12 item 5): quarantined changes get a way back.

PostgreSQL: a column added without `init` quarantines the changes that carry it; after `init`,
replay writes them into their window (files equal a fresh export, manifest revision 2), sends
them with their original LSN to the destinations that already had the window, and reports the
one a destination already holds a newer change of as superseded. SQLite (its triggers capture a
fixed column list, so `ALTER TABLE` alone quarantines nothing): changes refused by the schema
contract `discard_row` are recovered once the contract is `evolve`. Discard: audited, kept.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings, replace
from subscription_export.delivery.window import deliver_window
from subscription_export.export.cut import cut_windows
from subscription_export.export.flow import export_window_file, stream_window
from subscription_export.formats.manifest import manifest_path, read_manifest
from subscription_export.formats.writers import FORMATS, sha256_of, write_atomically
from subscription_export.runtime import Project
from subscription_export.sandbox.server import SandboxServer
from subscription_export.source.demo_table import create_demo_table, init_demo_source
from subscription_export.state.windows import Window
from subscription_export_tests.cli_run import run_cli as _run
from subscription_export_tests.delivery.test_window_delivery import (
    HOLDER,
    sandbox,  # noqa: F401 - the fixture
    write_destinations,
)
from subscription_export_tests.helpers import insert, update, writer


def _export(project: Project) -> Window:
    [window] = cut_windows(project).new_windows
    for fmt in FORMATS:
        export_window_file(project, fmt, window, holder=HOLDER)
    return window


def _fresh_parquet(project: Project, window: Window, target: Path) -> str:
    """The window as a normal export reads it now, written elsewhere: its sha256."""
    stream = stream_window(project, window)
    return write_atomically("parquet", stream.batches(), stream.schema, target).sha256


@pytest.mark.integration
def test_replay_after_init_recovers_rows_on_postgres(
    pg_url: str,
    tmp_path: Path,
    sandbox: dict[str, SandboxServer],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = writer(pg_url)
    init_demo_source(engine)
    with engine.begin() as conn:
        insert(conn, "a")  # LSN 1
        insert(conn, "b")  # LSN 2
        conn.execute(sa.text("ALTER TABLE subscriptions ADD COLUMN seats integer"))
    with engine.begin() as conn:
        update(conn, "a", seats=5)  # LSN 3: before `init`, quarantined
        update(conn, "b", seats=2)  # LSN 4: quarantined
    settings = Settings(
        source_url=pg_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "out",
        window_max_age_s=0.0,
    )
    project = Project(settings)
    first = _export(project)
    servers = {"erp": sandbox["erp"], "crm": sandbox["crm"]}
    path = tmp_path / "destinations.toml"
    config = write_destinations(path, servers)
    for name in servers:
        assert deliver_window(project, config.destinations[name], first, HOLDER).status == (
            "delivered"
        )
    init_demo_source(engine)  # registers capture version 2 with `seats`
    with engine.begin() as conn:
        update(conn, "b", status="paused")  # LSN 5: b's newest state, version 3
    second = _export(project)
    for name in servers:
        deliver_window(project, config.destinations[name], second, HOLDER)

    parquet = project.file_path("parquet", first.key)
    before = sha256_of(parquet)
    export_window_file(project, "parquet", first, holder=HOLDER)  # a plain re-export...
    assert sha256_of(parquet) == before  # ...changes nothing: the window never changes silently

    monkeypatch.setenv("SUBSCRIPTION_EXPORT_DESTINATIONS", str(path))
    listed = json.loads(_run(["quarantine", "list", "--json"], settings, tmp_path).stdout)
    assert sorted(r["lsn"] for r in listed) == [3, 4]

    [report] = json.loads(_run(["quarantine", "replay", "--json"], settings, tmp_path).stdout)
    assert report["recovered"] == [3, 4] and report["revision"] == 2
    outcomes = {(d["destination"], d["lsn"]): d["outcome"] for d in report["deliveries"]}
    assert outcomes == {
        ("erp", 3): "delivered",
        ("crm", 3): "delivered",
        ("erp", 4): "superseded",  # the ERP and CRM hold b at LSN 5 already
        ("crm", 4): "superseded",
    }

    rows = pq.read_table(parquet).to_pylist()
    assert [(r["_lsn"], r["seats"]) for r in rows] == [(1, None), (2, None), (3, 5), (4, 2)]
    assert sha256_of(parquet) == _fresh_parquet(project, first, tmp_path / "fresh.parquet")
    for asset in ("subscription_changes", "subscription_changes_csv"):
        manifest = read_manifest(manifest_path(settings.export_dir, asset, first.key))
        assert (manifest["revision"], manifest["recovered_lsns"]) == (2, [3, 4])
    _run(["verify"], settings, tmp_path)  # exit 0: every file matches its manifest

    erp = sandbox["erp"].system
    assert erp.records["a"]["version"] == 2 and erp.records["a"]["extra"] == {"seats": 5}
    assert erp.records["b"]["version"] == 3 and erp.records["b"]["status"] == "paused"
    assert erp.applications[f"erp:{first.key}:3"] == 1
    assert f"erp:{first.key}:4" not in erp.applications
    assert not any(q["lsn"] in (3, 4) for q in _open(settings, tmp_path))

    applied = dict(erp.applications)
    again = json.loads(_run(["quarantine", "replay", "--json"], settings, tmp_path).stdout)
    assert again == []  # nothing open, nothing left to send: a no-op
    assert sha256_of(parquet) == _fresh_parquet(project, first, tmp_path / "again.parquet")
    assert erp.applications == applied
    [audit] = json.loads(_run(["quarantine", "history", "--json"], settings, tmp_path).stdout)
    assert (audit["action"], audit["lsns"], audit["recovered"], audit["revision"]) == (
        "replay",
        [3, 4],
        [3, 4],
        2,
    )
    assert "@" in audit["actor"]


def _open(settings: Settings, tmp_path: Path) -> list[dict[str, object]]:
    return json.loads(_run(["quarantine", "list", "--json"], settings, tmp_path).stdout)


def test_replay_recovers_rows_a_schema_contract_refused_on_sqlite(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = writer(sqlite_url)
    init_demo_source(engine)
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "out",
        window_max_age_s=0.0,
        schema_contract="discard_row",
    )
    with engine.begin() as conn:
        insert(conn, "a")  # LSN 1
    _export(Project(settings))  # registers the dataset schema the contract holds to
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE subscriptions ADD COLUMN seats integer"))
    init_demo_source(engine)
    with engine.begin() as conn:
        update(conn, "a", seats=7)  # LSN 2: refused by discard_row
        insert(conn, "c", amount="3.00")  # LSN 3: refused too (capture version 2)
    project = Project(settings)
    window = _export(project)
    assert [q["lsn"] for q in _open(settings, tmp_path)] == [3, 2]

    evolving = replace(settings, schema_contract="evolve")
    [report] = json.loads(
        _run(["quarantine", "replay", "--lsn", "2", "--json"], evolving, tmp_path).stdout
    )
    assert report["recovered"] == [2] and report["revision"] == 2
    project = Project(evolving)
    parquet = project.file_path("parquet", window.key)
    assert [r["_lsn"] for r in pq.read_table(parquet).to_pylist()] == [2]
    assert sha256_of(parquet) == _fresh_parquet(project, window, tmp_path / "fresh.parquet")
    assert [q["lsn"] for q in _open(evolving, tmp_path)] == [3]  # not asked for: still open


def test_discard_is_audited_and_leaves_the_open_list(settings: Settings, tmp_path: Path) -> None:
    engine = writer(settings.source_url)
    with engine.begin() as conn:
        insert(conn, "a")
        insert(conn, "b")
    with engine.begin() as conn:
        update(conn, "b", currency="XXQ")  # LSN 3: not an ISO 4217 currency
    project = Project(settings)
    window = _export(project)
    assert [q["lsn"] for q in _open(settings, tmp_path)] == [3]

    [still] = json.loads(_run(["quarantine", "replay", "--json"], settings, tmp_path).stdout)
    assert still["recovered"] == [] and [q["lsn"] for q in still["still_quarantined"]] == [3]
    assert "ISO 4217" in still["still_quarantined"][0]["reason"]

    discard = ["quarantine", "discard", "--lsn", "3", "--reason", "fixed at the source by LSN 4"]
    _run(discard, settings, tmp_path)
    assert _open(settings, tmp_path) == []
    everything = json.loads(
        _run(["quarantine", "list", "--all", "--json"], settings, tmp_path).stdout
    )
    assert [(q["lsn"], q["status"]) for q in everything] == [(3, "discarded")]
    audit = json.loads(_run(["quarantine", "history", "--json"], settings, tmp_path).stdout)
    assert [(a["action"], a["lsns"], a["reason"]) for a in audit] == [
        ("discard", [3], "fixed at the source by LSN 4"),
        ("replay", [3], None),
    ]
    before = sha256_of(project.file_path("parquet", window.key))
    export_window_file(project, "parquet", window, holder=HOLDER)  # stays out of the files
    assert sha256_of(project.file_path("parquet", window.key)) == before
    assert json.loads(_run(["quarantine", "replay", "--json"], settings, tmp_path).stdout) == []


def _two_tables_refused(sqlite_url: str, tmp_path: Path) -> tuple[Settings, Window]:
    """Two captured tables, each with a change the contract refused: LSN 3 (subscriptions)
    and LSN 4 (plans) open in the window."""
    engine = writer(sqlite_url)
    create_demo_table(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE plans (code TEXT PRIMARY KEY, title TEXT NOT NULL)")
    settings = Settings(
        source_url=sqlite_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "out",
        window_max_age_s=0.0,
        schema_contract="discard_row",
        tables="subscriptions,plans",
    )
    _run(["init"], settings, tmp_path)
    with engine.begin() as conn:
        insert(conn, "a")  # LSN 1
        conn.exec_driver_sql("INSERT INTO plans VALUES ('p1', 'Basic')")  # LSN 2
    _export_all(Project(settings))  # registers both dataset schemas the contract holds to
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE subscriptions ADD COLUMN seats integer")
        conn.exec_driver_sql("ALTER TABLE plans ADD COLUMN tier integer")
    _run(["init"], settings, tmp_path)
    with engine.begin() as conn:
        update(conn, "a", seats=7)  # LSN 3: refused by discard_row
        conn.exec_driver_sql("UPDATE plans SET tier = 2 WHERE code = 'p1'")  # LSN 4: refused
    window = _export_all(Project(settings))
    assert sorted(q["lsn"] for q in _open(settings, tmp_path)) == [3, 4]
    return settings, window


def test_replay_recovers_rows_of_every_captured_table(sqlite_url: str, tmp_path: Path) -> None:
    """Two tables, each with a change the contract refused: replay recovers both, each into its
    own table's files (not the first table's), and `verify` agrees with every manifest."""
    settings, window = _two_tables_refused(sqlite_url, tmp_path)

    evolving = replace(settings, schema_contract="evolve")
    [report] = json.loads(_run(["quarantine", "replay", "--json"], evolving, tmp_path).stdout)
    assert report["recovered"] == [3, 4] and report["still_quarantined"] == []
    assert _open(evolving, tmp_path) == []
    project = Project(evolving)
    for dataset, lsn in zip(project.datasets, (3, 4), strict=True):
        path = project.file_path("parquet", window.key, dataset)
        assert [r["_lsn"] for r in pq.read_table(path).to_pylist()] == [lsn], dataset
        manifest = read_manifest(manifest_path(evolving.export_dir, dataset.name, window.key))
        assert (manifest["revision"], manifest["recovered_lsns"]) == (2, [lsn])
    _run(["verify"], evolving, tmp_path)


def _export_all(project: Project) -> Window:
    [window] = cut_windows(project).new_windows
    for dataset in project.datasets:
        for fmt in FORMATS:
            export_window_file(project, fmt, window, holder=HOLDER, dataset=dataset)
    return window


def test_an_entry_of_a_table_no_longer_captured_is_reported_still_quarantined(
    sqlite_url: str, tmp_path: Path
) -> None:
    """`plans` left the tables setting: its entry cannot be tried, and replay says so (still
    quarantined, the reason naming the table) instead of passing over it in silence."""
    settings, _window = _two_tables_refused(sqlite_url, tmp_path)
    narrowed = replace(settings, schema_contract="evolve", tables="subscriptions")
    [report] = json.loads(_run(["quarantine", "replay", "--json"], narrowed, tmp_path).stdout)
    assert report["recovered"] == [3]
    [left] = report["still_quarantined"]
    assert (
        left["lsn"] == 4 and "'plans_changes' is of a table that is not captured" in left["reason"]
    )
