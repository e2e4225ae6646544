"""Renaming or dropping a column captured as its text (json, jsonb, and the types exported
as text for lack of a mapping: interval, money, numeric without precision, …) without
re-running `init` made every write of the application on the table fail: the trigger named
the column (`NEW."j"::text`) and PL/pgSQL refused it (`record "new" has no field "j"`). The
capture must never break the application's writes; the export then treats the change as any
other column change made without `init`, and the images' bytes of the columns still there
must not change."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from subscription_export.core.settings import Settings
from subscription_export.source.schema import init_source
from subscription_export.state.quarantine import list_quarantine
from subscription_export_tests.cli_run import run_cli
from subscription_export_tests.helpers import writer

pytestmark = pytest.mark.integration

_VALUES = {"json": '{"b": 1,  "a": [1.50]}', "jsonb": '{"a": [1.50]}', "interval": "1 day"}


def _settings(pg_url: str, tmp_path: Path) -> Settings:
    return Settings(
        source_url=pg_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_age_s=0.0,
        table="t",
    )


def _exported(settings: Settings) -> list[dict[str, object]]:
    files = sorted((Path(settings.export_dir) / "t_changes").glob("*.parquet"))
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: r["_lsn"])


@pytest.mark.parametrize("ddl", ["rename", "drop"])
@pytest.mark.parametrize("typ", ["json", "jsonb", "interval"])
def test_renaming_or_dropping_an_as_text_column_keeps_the_application_writing(
    pg_url: str, tmp_path: Path, typ: str, ddl: str
) -> None:
    engine = writer(pg_url)
    settings = _settings(pg_url, tmp_path)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE t (id integer PRIMARY KEY, v text, c {typ})")
    run_cli(["init"], settings, tmp_path)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO t VALUES (1, 'a', :c)"), {"c": _VALUES[typ]})
    alter = "RENAME COLUMN c TO c2" if ddl == "rename" else "DROP COLUMN c"
    with engine.begin() as conn:
        conn.exec_driver_sql(f"ALTER TABLE t {alter}")
        logged = conn.exec_driver_sql("SELECT max(id) FROM subscription_change_log")
        before = logged.scalar_one()

    # The application's writes, each in its own transaction as an application would.
    for statement in (
        "INSERT INTO t (id, v) VALUES (2, 'b')",
        "UPDATE t SET v = 'a2' WHERE id = 1",
        "UPDATE t SET id = 3 WHERE id = 2",
        "DELETE FROM t WHERE id = 3",
    ):
        with engine.begin() as conn:
            conn.exec_driver_sql(statement)
    with engine.connect() as conn:
        images = conn.execute(
            sa.text("SELECT op, after FROM subscription_change_log WHERE id > :n ORDER BY id"),
            {"n": before},
        ).all()
    assert [op for op, _ in images] == ["c", "u", "d", "c", "d"]
    after_insert = images[0][1]
    assert "c" not in after_insert  # gone from the row, so gone from the image
    if ddl == "rename":
        assert after_insert["c2"] is None  # under its new name, as to_jsonb gives it

    run_cli(["run", "--once"], settings, tmp_path)
    reasons = [e["reason"] for e in list_quarantine(sa.create_engine(settings.state_url))]
    if ddl == "rename":
        assert reasons and all("init" in str(r) for r in reasons), reasons
    else:
        assert reasons == []
        exported = _exported(settings)
        assert [r["id"] for r in exported][-5:] == [2, 1, 2, 3, 3]
        assert all(r["c"] is None for r in exported[-5:])

    run_cli(["init"], settings, tmp_path)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO t (id, v) VALUES (4, 'd')")
    run_cli(["run", "--once"], settings, tmp_path)
    assert _exported(settings)[-1]["id"] == 4


@pytest.mark.parametrize("ddl", ["RENAME COLUMN c TO c2", "DROP COLUMN c"], ids=["rename", "drop"])
def test_truncate_after_an_as_text_column_changed_is_still_captured(
    pg_url: str, tmp_path: Path, ddl: str
) -> None:
    engine = writer(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (id integer PRIMARY KEY, c jsonb, k json)")
    init_source(engine, "t")
    with engine.begin() as conn:
        conn.exec_driver_sql("""INSERT INTO t VALUES (1, '{"a": 1}', '{"z":  1, "z": 2}')""")
        conn.exec_driver_sql(f"ALTER TABLE t {ddl}")
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE t")
    with engine.connect() as conn:
        [(op, before)] = conn.exec_driver_sql(
            "SELECT op, before FROM subscription_change_log WHERE op = 'd'"
        ).all()
    assert op == "d"
    assert before["k"] == '{"z":  1, "z": 2}'  # the column still there: its text, verbatim
    assert "c" not in before


_AS_TEXT_TABLE = """CREATE TABLE t (
    id integer PRIMARY KEY, v integer, j json, jb jsonb, iv interval, m money, nn numeric,
    wide numeric(50, 2), iva interval[], ma money[], nna numeric[], x xml, p point,
    gone jsonb
)"""
_AS_TEXT_ROWS = [
    "(1, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
    """(2, 0, 'null', 'null', '0', '0', 'NaN', 0, '{}', '{}', '{}', '', '(0,0)', '1')""",
    """(3, 0, '  {"z": 1,   "a" : [1.50, {"n": null}],"z":2}  ', '{"z": 1, "a": [1.50, {}]}',
        '1 year 2 mons -3 days 04:05:06.789', '-12.34', '1.500',
        123456789012345678901234567890123456789012345678.90,
        '{"1 day",NULL,"-00:00:01"}', '{1.5,NULL}', '{NaN,1e-30,NULL}', '<a b="c"/>',
        '(1.5,-2)', '"s"')""",
    f"""(4, 0, '"a\\\\u0000 string"', '[]', '-178000000 years', '92233720368547758.07',
        '{"9" * 1000}.{"0" * 20}1', NULL, NULL, NULL, '{{Infinity}}', NULL, NULL, 'null')""",
]


def test_images_of_as_text_columns_keep_their_bytes_before_and_after_a_column_change(
    pg_url: str,
) -> None:
    """Every type init captures as text, NULLs and edge values: the trigger's image equals
    `to_jsonb(row)` with each such column as `col::text` (the image of releases before, and
    the snapshot's), by the fast path and, once a column was dropped without init, by the
    dynamic one for the columns still there."""
    engine = writer(pg_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(_AS_TEXT_TABLE)
    schema = init_source(engine, "t")
    assert set(schema.as_text) == {
        "j",
        "jb",
        "iv",
        "m",
        "nn",
        "wide",
        "iva",
        "ma",
        "nna",
        "x",
        "p",
        "gone",
    }
    as_text = schema.as_text
    with engine.begin() as conn:
        conn.exec_driver_sql(f"INSERT INTO t VALUES {', '.join(_AS_TEXT_ROWS)}")
    pairs = ", ".join(f"'{n}', t.{n}::text" for n in as_text)
    expected_sql = f"SELECT id, to_jsonb(t) || jsonb_build_object({pairs}) FROM t ORDER BY id"
    with engine.connect() as conn:
        expected = dict(conn.exec_driver_sql(expected_sql).all())
        logged = conn.exec_driver_sql(
            "SELECT subscription_id::int, after FROM subscription_change_log ORDER BY id"
        ).all()
    assert dict(logged) == expected
    assert expected[1]["j"] is None and expected[2]["j"] == "null"  # told apart
    assert expected[3]["j"].startswith("  {")  # json's text verbatim, whitespace and all

    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE t DROP COLUMN gone")
        conn.exec_driver_sql("UPDATE t SET v = 1")
        changed = conn.exec_driver_sql(
            "SELECT subscription_id::int, after FROM subscription_change_log WHERE op = 'u'"
        ).all()
    assert len(changed) == len(expected)
    assert dict(changed) == {
        k: {n: v if n != "v" else 1 for n, v in image.items() if n != "gone"}
        for k, image in expected.items()
    }
