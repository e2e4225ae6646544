"""An audit row is rendered by one codec: the records (`sync_state`) and the per-field
decisions (`conflicts`) write the same value the same way, and so do dead letters."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import sqlalchemy as sa

from subscription_export.core.codec import to_jsonable
from subscription_export.delivery.clients import Unit
from subscription_export.delivery.dead_letters import NewDeadLetter, payload_text
from subscription_export.reconcile import audit_log, sync_state
from subscription_export.reconcile.conflicts import Decision

TEN = Decimal("1E+1")  # str() gives "1E+1", the exact plain form is "10"
NAIVE = dt.datetime(2027, 1, 31, 8, 0)  # naive = UTC (DESIGN.md invariant 6)


def test_an_audit_row_renders_record_values_and_decisions_identically() -> None:
    engine = sa.create_engine("sqlite://")
    sync_state.init_sync_state(engine)
    local = {"amount": TEN, "renews_at": NAIVE}
    remote = {"amount": Decimal("12.5"), "renews_at": NAIVE + dt.timedelta(hours=1)}
    decisions = [
        Decision(name, None, local[name], remote[name], "local", "test").to_audit_dict()
        for name in ("amount", "renews_at")
    ]
    with engine.begin() as conn:
        audit_log.add_audit(
            conn,
            destination="erp",
            subscription_id="s1",
            ref="feed:1",
            strategy="source_wins",
            outcome="resolved",
            base=None,
            local=local,
            remote=remote,
            merged=local,
            detail={"decisions": decisions},
        )

    (entry,) = audit_log.history(engine, "s1")

    by_field = {d["field"]: d for d in entry.detail["decisions"]}
    for name in ("amount", "renews_at"):
        assert by_field[name]["local"] == entry.local[name] == entry.merged[name]  # type: ignore[index]
        assert by_field[name]["remote"] == entry.remote[name]  # type: ignore[index]
    assert entry.local == {"amount": "10", "renews_at": "2027-01-31T08:00:00.000000Z"}


def test_a_dead_letter_row_uses_the_same_rendering() -> None:
    row = {"_lsn": 7, "amount": TEN, "_changed_at": NAIVE.replace(tzinfo=dt.UTC)}
    letter = NewDeadLetter(7, "s1", "erp:w:7", (Unit("k", {"x": 1}),), row, "refused", 1)

    stored = json.loads(payload_text(letter))

    assert stored["row"] == to_jsonable(row)
    assert stored["row"]["_changed_at"] == "2027-01-31T08:00:00.000000Z"
