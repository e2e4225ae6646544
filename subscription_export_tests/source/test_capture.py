"""Capture: triggers record creates, updates and deletes with images, origin and UTC time."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import sqlalchemy as sa

from subscription_export.core.values import to_utc
from subscription_export.source.demo_table import init_demo_source
from subscription_export.source.schema import clear_origin, set_origin
from subscription_export.source.sequencer import sequence
from subscription_export_tests.helpers import delete, insert, update, writer


def _log(engine: sa.Engine) -> list[dict]:
    sequence(engine, wait_s=10.0)  # other tests may hold the cluster-wide horizon briefly
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT lsn, op, subscription_id, before, after, changed_at, origin, schema_version"
                " FROM subscription_change_log ORDER BY lsn"
            )
        ).mappings()
        out = []
        for r in rows:
            item = dict(r)
            for image in ("before", "after"):
                raw = item[image]
                if isinstance(raw, str):
                    item[image] = json.loads(raw, parse_float=Decimal)
            out.append(item)
        return out


def test_insert_update_delete_are_captured_in_order(source_url: str) -> None:
    engine = writer(source_url)
    init_demo_source(engine)
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    with engine.begin() as conn:
        insert(conn, "s1", amount="10.50")
    with engine.begin() as conn:
        update(conn, "s1", status="paused")
    with engine.begin() as conn:
        delete(conn, "s1")
    log = _log(engine)
    assert [r["lsn"] for r in log] == [1, 2, 3]
    assert [r["op"] for r in log] == ["c", "u", "d"]
    assert log[0]["before"] is None and log[0]["after"]["status"] == "active"
    assert Decimal(str(log[0]["after"]["amount"])) == Decimal("10.50")
    assert log[1]["before"]["status"] == "active" and log[1]["after"]["status"] == "paused"
    assert log[2]["after"] is None and log[2]["before"]["status"] == "paused"
    assert all(r["origin"] == "app" and r["schema_version"] == 1 for r in log)
    for r in log:
        changed = to_utc(r["changed_at"])
        assert changed.tzinfo == dt.UTC and before <= changed <= dt.datetime.now(dt.UTC)


def test_origin_tags_only_its_transaction(source_url: str) -> None:
    engine = writer(source_url)
    init_demo_source(engine)
    with engine.begin() as conn:
        set_origin(conn, "erp")
        insert(conn, "s1")
        clear_origin(conn)
    with engine.begin() as conn:
        insert(conn, "s2")
    assert [r["origin"] for r in _log(engine)] == ["erp", "app"]


def test_init_is_idempotent_and_captures_added_columns(source_url: str) -> None:
    engine = writer(source_url)
    assert init_demo_source(engine).version == 1
    assert init_demo_source(engine).version == 1  # nothing changed: same version, no error
    with engine.begin() as conn:
        insert(conn, "s1")
        conn.execute(sa.text("ALTER TABLE subscriptions ADD COLUMN discount_code TEXT"))
    schema = init_demo_source(engine)
    assert schema.version == 2
    assert schema.columns[-1].name == "discount_code"
    with engine.begin() as conn:
        update(conn, "s1", discount_code="WELCOME10")
    log = _log(engine)
    assert [r["schema_version"] for r in log] == [1, 2]
    assert "discount_code" not in log[0]["after"]
    assert log[1]["after"]["discount_code"] == "WELCOME10"
