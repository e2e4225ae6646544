"""Small helpers for writing to a source as an application would."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from subscription_export.core.db import engine_for

_INSERT = sa.text(
    "INSERT INTO subscriptions (id, user_id, name, category, amount, currency, billing_cycle,"
    " status, next_billing_date, timezone, created_at, updated_at, version) VALUES (:id, 'u1',"
    " :name, 'software', :amount, 'EUR', 'monthly', 'active', '2027-01-31', 'Europe/Berlin',"
    " :ts, :ts, 1)"
)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def writer(url: str) -> Engine:
    return engine_for(url, writer=True)


def insert(conn: sa.Connection, sub_id: str, amount: str = "9.99", name: str = "Plan") -> None:
    conn.execute(_INSERT, {"id": sub_id, "name": name, "amount": amount, "ts": now_iso()})


def update(conn: sa.Connection, sub_id: str, **fields: object) -> None:
    sets = ", ".join(f"{k} = :{k}" for k in fields)
    conn.execute(
        sa.text(f"UPDATE subscriptions SET {sets}, version = version + 1 WHERE id = :id"),
        {"id": sub_id, **fields},
    )


def delete(conn: sa.Connection, sub_id: str) -> None:
    conn.execute(sa.text("DELETE FROM subscriptions WHERE id = :id"), {"id": sub_id})


def read_exported(folder: Path) -> pa.Table:
    files = sorted(folder.glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
