"""Issue 13, item 2: several captured tables in one ordered stream, each exported as its own
dataset. Two tables written in the same transactions (several writers on PostgreSQL): per key
the stream is in commit order, each transaction's rows of both tables are in LSN order
consistent with one commit order, and replaying each table's export gives exactly the table.
A window with changes of one table only gives the other an empty, schema-correct file, and
every consumer's watermark stays contiguous."""

from __future__ import annotations

import itertools
import random
import threading
from collections import defaultdict
from pathlib import Path

import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from subscription_export.core.datasets import TableDataset
from subscription_export.core.errors import ConfigError
from subscription_export.core.settings import Settings, replace
from subscription_export.export.cut import cut_windows, incomplete_windows
from subscription_export.export.flow import export_window_file
from subscription_export.formats.writers import FORMATS
from subscription_export.runtime import Project
from subscription_export.source.demo_table import create_demo_table
from subscription_export.source.schema import init_tables
from subscription_export.source.sequencer import sequence
from subscription_export.state.windows import list_windows
from subscription_export_tests.helpers import insert, read_exported, writer

TABLES = ("subscriptions", "plans")
PLANS_DDL = "CREATE TABLE plans (id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL)"
KEYS = 6


def _settings(url: str, tmp_path: Path, max_changes: int = 40) -> Settings:
    return Settings(
        source_url=url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_changes=max_changes,
        window_max_age_s=0.0,
        read_batch_size=16,
        tables=",".join(TABLES),
    )


def _source(url: str) -> sa.Engine:
    engine = writer(url)
    create_demo_table(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql(PLANS_DDL)
    init_tables(engine, TABLES)
    return engine


def _export_everything(project: Project) -> None:
    cut_windows(project)
    for window in list_windows(project.state):
        for dataset in project.datasets:
            for fmt in FORMATS:
                export_window_file(project, fmt, window, dataset=dataset)


def _transaction(conn: sa.Connection, rng: random.Random, marker: str) -> list[str]:
    """Update one subscription and one plan (in random order), sometimes replacing the plan
    (marked, deleted, a new one inserted); every row written carries `marker`. Returns the
    table of each change-log row it wrote, in statement order."""
    sub, plan = f"s{rng.randrange(KEYS)}", f"p{rng.randrange(KEYS)}"
    mark = "UPDATE {t} SET name = :m, version = version + 1 WHERE id = :k"
    steps = ["sub", "plan"] if rng.random() < 0.5 else ["plan", "sub"]
    changed: list[str] = []
    for step in steps:
        table, key = ("subscriptions", sub) if step == "sub" else ("plans", plan)
        done = conn.execute(sa.text(mark.format(t=table)), {"m": marker, "k": key}).rowcount
        if step == "plan" and rng.random() < 0.15:
            # The delete's before-image is the row just marked, so it names this transaction.
            done += conn.execute(sa.text("DELETE FROM plans WHERE id = :k"), {"k": plan}).rowcount
            done += conn.execute(
                sa.text("INSERT INTO plans (id, name, version) VALUES (:k, :m, 1)"),
                {"k": f"{plan}-{marker}", "m": marker},
            ).rowcount
        changed += [step] * done
    return changed


def _writers(engine: sa.Engine, writers: int, each: int) -> dict[str, list[str]]:
    """Run `writers` threads of `each` transactions; marker → tables changed, per committed
    transaction (a deadlock victim is retried under a new marker)."""
    committed: dict[str, list[str]] = {}
    lock = threading.Lock()

    def work(n: int) -> None:
        rng = random.Random(n)
        for i in range(each):
            for attempt in range(20):
                marker = f"w{n}-{i}-{attempt}"
                try:
                    with engine.begin() as conn:
                        changed = _transaction(conn, rng, marker)
                except sa.exc.DBAPIError:
                    continue  # deadlock between writers: PostgreSQL rolled one back
                with lock:
                    committed[marker] = changed
                break

    threads = [threading.Thread(target=work, args=(n,)) for n in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return committed


def _seed(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for k in range(KEYS):
            insert(conn, f"s{k}", name="seed")
            conn.execute(
                sa.text("INSERT INTO plans (id, name, version) VALUES (:k, 'seed', 1)"),
                {"k": f"p{k}"},
            )


def _stream(project: Project) -> list[tuple[int, str, str, str, str, int]]:
    """Both tables' exports merged by LSN: (lsn, table, op, key, name, version)."""
    rows = []
    for dataset, key in ((TableDataset("subscriptions"), "id"), (TableDataset("plans"), "id")):
        exported = read_exported(project.settings.export_dir / dataset.asset("parquet"))
        columns = [exported.column(c).to_pylist() for c in ("_lsn", "_op", key, "name", "version")]
        rows += [(lsn, dataset.table, *rest) for lsn, *rest in zip(*columns, strict=True)]
    return sorted(rows)


def _assert_one_commit_order(stream: list[tuple], committed: dict[str, list[str]]) -> None:
    """Per key versions rise with LSN; the per-key orders of all keys of both tables fit one
    serial order of the transactions (no cycle); a transaction's rows keep statement order."""
    by_key: dict[tuple[str, str], list[tuple[str, int, str]]] = defaultdict(list)
    rows_of: dict[str, list[str]] = defaultdict(list)
    for _lsn, table, op, key, name, version in stream:
        by_key[(table, key)].append((op, version, name))
        rows_of[name].append("sub" if table == "subscriptions" else "plan")
    after: dict[str, set[str]] = defaultdict(set)
    for changes in by_key.values():
        versions = [v for op, v, _ in changes if op != "d"]
        assert versions == sorted(set(versions)), changes  # commit order per key
        markers = [m for _, _, m in changes if m != "seed"]
        for earlier, later in itertools.pairwise(markers):
            if earlier != later:
                after[earlier].add(later)
    _assert_acyclic(after)
    for marker, changed in committed.items():
        assert rows_of.get(marker, []) == changed, marker


def _assert_acyclic(after: dict[str, set[str]]) -> None:
    incoming: dict[str, int] = defaultdict(int)
    for targets in after.values():
        for target in targets:
            incoming[target] += 1
    ready = [m for m in after if not incoming[m]]
    seen = 0
    while ready:
        node = ready.pop()
        seen += 1
        for target in after.get(node, ()):
            incoming[target] -= 1
            if not incoming[target]:
                ready.append(target)
    nodes = set(after) | {t for targets in after.values() for t in targets}
    assert seen == len(nodes), "transactions ordered differently on different keys"


def _replayed(project: Project, dataset: TableDataset) -> dict[str, tuple[str, int]]:
    exported = read_exported(project.settings.export_dir / dataset.asset("parquet"))
    state: dict[str, tuple[str, int]] = {}
    for row in exported.sort_by("_lsn").to_pylist():
        if row["_op"] == "d":
            state.pop(row["id"])
        else:
            state[row["id"]] = (row["name"], row["version"])
    return state


def _table_now(engine: sa.Engine, table: str) -> dict[str, tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(f"SELECT id, name, version FROM {table}")).all()
    return {i: (n, int(v)) for i, n, v in rows}


def test_two_tables_written_in_the_same_transactions(source_url: str, tmp_path: Path) -> None:
    engine = _source(source_url)
    _seed(engine)
    postgres = engine.dialect.name == "postgresql"
    committed = _writers(engine, writers=4 if postgres else 1, each=40)
    sequence(engine)
    project = Project(_settings(source_url, tmp_path))
    _export_everything(project)
    stream = _stream(project)
    assert [r[0] for r in stream] == list(range(1, len(stream) + 1))  # one gap-free sequence
    assert {r[4] for r in stream} - {"seed"} == {m for m, c in committed.items() if c}
    _assert_one_commit_order(stream, committed)
    for dataset in project.datasets:
        assert _replayed(project, dataset) == _table_now(engine, dataset.table)


def test_a_window_of_one_table_gives_the_other_an_empty_file(
    source_url: str, tmp_path: Path
) -> None:
    engine = _source(source_url)
    project = Project(_settings(source_url, tmp_path, max_changes=1000))
    with engine.begin() as conn:
        insert(conn, "only-subscriptions")
    _export_everything(project)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO plans (id, name, version) VALUES ('p', 'x', 1)")
    _export_everything(project)
    first, second = list_windows(project.state)
    plans, subs = TableDataset("plans"), TableDataset("subscriptions")
    empty = pq.read_table(project.file_path("parquet", first.key, plans))
    assert empty.num_rows == 0
    assert empty.column_names[-3:] == ["id", "name", "version"]
    assert str(empty.schema.field("version").type) == "int64"
    header = (project.file_path("csv", first.key, plans)).read_text().splitlines()
    assert header == [",".join(f'"{name}"' for name in empty.column_names)]
    assert project.file_path("jsonl", first.key, plans).read_bytes() == b""
    assert pq.read_table(project.file_path("parquet", second.key, subs)).num_rows == 0
    assert pq.read_table(project.file_path("parquet", second.key, plans)).num_rows == 1
    assert pacsv.read_csv(project.file_path("csv", first.key, subs)).num_rows == 1
    marks = project.watermarks.all()
    consumers = [d.consumer(f) for d in project.datasets for f in FORMATS]
    assert consumers == [*FORMATS, "plans.parquet", "plans.csv", "plans.jsonl"]
    assert {c: marks.get(c) for c in consumers} == dict.fromkeys(consumers, second.hi)


def test_re_exporting_an_empty_window_gives_the_same_bytes(sqlite_url: str, tmp_path: Path) -> None:
    engine = _source(sqlite_url)
    project = Project(_settings(sqlite_url, tmp_path))
    with engine.begin() as conn:
        insert(conn, "a")
    _export_everything(project)
    [window] = list_windows(project.state)
    plans = TableDataset("plans")
    before = {f: project.file_path(f, window.key, plans).read_bytes() for f in FORMATS}
    with engine.begin() as conn:  # a later column must not change the old empty file
        conn.exec_driver_sql("ALTER TABLE plans ADD COLUMN tier TEXT")
    init_tables(engine, TABLES)
    for fmt in FORMATS:
        export_window_file(project, fmt, window, dataset=plans)
    assert {f: project.file_path(f, window.key, plans).read_bytes() for f in FORMATS} == before


@pytest.mark.parametrize(
    ("tables", "why"),
    [
        ("plans, plans", "more than once"),
        ("a-b,a_b", "would both export as a_b_changes"),
        ("subscription", "the name kept for 'subscriptions'"),
        ("plans,,x", "empty table name"),
    ],
)
def test_tables_setting_refuses_ambiguous_lists(tables: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        Settings(tables=tables)


def test_tables_setting_defaults_to_the_one_table_form() -> None:
    assert Settings().captured_tables == ("subscriptions",)
    assert Settings(table="accounts").captured_tables == ("accounts",)
    assert Settings(table="accounts", tables=" plans , accounts").captured_tables == (
        "plans",
        "accounts",
    )


def _to_single_table_release(engine: sa.Engine) -> None:
    """Turn a fresh capture into what the single-table release left: no `source_table`."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP TRIGGER subscriptions_capture ON subscriptions")
            conn.exec_driver_sql("DROP TRIGGER plans_capture ON plans")
        else:
            triggers = conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'trigger'"
            ).scalars()
            for name in list(triggers):
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
        conn.exec_driver_sql("DELETE FROM subscription_capture_schema WHERE source_table = 'plans'")
        for table in ("subscription_change_log", "subscription_capture_schema"):
            conn.exec_driver_sql(f"ALTER TABLE {table} DROP COLUMN source_table")


def test_a_single_table_log_is_upgraded_its_rows_the_first_tables(
    source_url: str, tmp_path: Path
) -> None:
    engine = _source(source_url)
    with engine.begin() as conn:
        insert(conn, "before-1")
        insert(conn, "before-2")
    _to_single_table_release(engine)
    init_tables(engine, TABLES)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO plans (id, name, version) VALUES ('p', 'x', 1)")
        insert(conn, "after")
    with engine.connect() as conn:
        owners = conn.exec_driver_sql(
            "SELECT subscription_id, source_table FROM subscription_change_log ORDER BY id"
        ).all()
    assert [tuple(r) for r in owners] == [
        ("before-1", "subscriptions"),
        ("before-2", "subscriptions"),
        ("p", "plans"),
        ("after", "subscriptions"),
    ]
    with engine.connect() as conn, pytest.raises(sa.exc.IntegrityError):  # no default left
        conn.exec_driver_sql(
            "INSERT INTO subscription_change_log (op, subscription_id, changed_at, schema_version)"
            " VALUES ('c', 'k', '2026-01-01T00:00:00Z', 1)"
        )
    project = Project(_settings(source_url, tmp_path))
    _export_everything(project)
    subs = read_exported(project.settings.export_dir / "subscription_changes")
    assert subs.column("id").to_pylist() == ["before-1", "before-2", "after"]
    assert _replayed(project, TableDataset("plans")) == {"p": ("x", 1)}


def _pg_triggers(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
            " WHERE NOT t.tgisinternal AND c.relnamespace = current_schema()::regnamespace"
            " ORDER BY 1, 2"
        ).all()
    return [tuple(r) for r in rows]


@pytest.mark.integration
def test_postgres_triggers_have_the_documented_names(pg_url: str) -> None:
    """`DROP TRIGGER plans_capture ON plans` (README) must name the trigger; a release that
    named it `"plans_capture"` (quotes included) is replaced on init, not doubled."""
    engine = _source(pg_url)
    assert _pg_triggers(engine) == [
        ("plans", "plans_capture"),
        ("plans", "subscription_capture_truncate"),
        ("subscriptions", "subscription_capture_truncate"),
        ("subscriptions", "subscriptions_capture"),
    ]
    with engine.begin() as conn:  # as the previous release installed it
        conn.exec_driver_sql('ALTER TRIGGER plans_capture ON plans RENAME TO """plans_capture"""')
    init_tables(engine, TABLES)
    assert _pg_triggers(engine) == [
        ("plans", "plans_capture"),
        ("plans", "subscription_capture_truncate"),
        ("subscriptions", "subscription_capture_truncate"),
        ("subscriptions", "subscriptions_capture"),
    ]
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO plans (id, name, version) VALUES ('p', 'x', 1)")
    with engine.connect() as conn:
        logged = conn.exec_driver_sql("SELECT COUNT(*) FROM subscription_change_log").scalar()
    assert logged == 1


def test_a_table_added_later_gets_empty_files_for_the_earlier_windows(
    sqlite_url: str, tmp_path: Path
) -> None:
    engine = writer(sqlite_url)
    create_demo_table(engine)
    init_tables(engine, ("subscriptions",))
    alone = Project(replace(_settings(sqlite_url, tmp_path), tables="subscriptions"))
    with engine.begin() as conn:
        insert(conn, "a")
    _export_everything(alone)
    [window] = list_windows(alone.state)
    subs = TableDataset("subscriptions")
    before = {f: alone.file_path(f, window.key, subs).read_bytes() for f in FORMATS}
    with engine.begin() as conn:
        conn.exec_driver_sql(PLANS_DDL)
    init_tables(engine, TABLES)
    both = Project(_settings(sqlite_url, tmp_path))
    assert incomplete_windows(both) == [window]  # the new table's watermarks start at 0
    for dataset in both.datasets:
        for fmt in FORMATS:
            export_window_file(both, fmt, window, dataset=dataset)
    assert {f: both.file_path(f, window.key, subs).read_bytes() for f in FORMATS} == before
    plans = pq.read_table(both.file_path("parquet", window.key, TableDataset("plans")))
    assert plans.num_rows == 0 and plans.column_names[-3:] == ["id", "name", "version"]
    assert incomplete_windows(both) == []
    assert set(both.watermarks.all().values()) == {window.hi}


def test_a_table_removed_from_the_setting_no_longer_exports(
    sqlite_url: str, tmp_path: Path
) -> None:
    """Its triggers stay (init warns), so its changes still take LSNs; the remaining table's
    export leaves them out and still passes its coverage check."""
    engine = _source(sqlite_url)
    alone = Project(replace(_settings(sqlite_url, tmp_path), tables="subscriptions"))
    with engine.begin() as conn:
        insert(conn, "a")
        conn.exec_driver_sql("INSERT INTO plans (id, name, version) VALUES ('p', 'x', 1)")
        insert(conn, "b")
    _export_everything(alone)
    subs = read_exported(alone.settings.export_dir / "subscription_changes")
    assert subs.column("_lsn").to_pylist() == [1, 3]
    assert not (alone.settings.export_dir / "plans_changes").exists()
    assert set(alone.watermarks.all()) == set(FORMATS)
