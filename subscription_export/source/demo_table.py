"""The demo's `subscriptions` table. Only `demo`, the sandbox tools and tests create it: `init`
captures a table that already exists and never creates one.

The SQLite declarations name the logical type after `TEXT` (`TEXT DECIMAL(18, 4)`): the
`TEXT` gives the column text affinity, so values stay exactly as written (a NUMERIC affinity
would turn '12.3400' into a float), and the rest tells `init` what the text holds.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from subscription_export.core.db import is_postgres
from subscription_export.source.schema import DEFAULT_TABLE, CaptureSchema, init_source

_SQLITE = """CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    category TEXT,
    amount TEXT DECIMAL(18, 4) NOT NULL,
    currency TEXT NOT NULL,
    billing_cycle TEXT NOT NULL,
    status TEXT NOT NULL,
    next_billing_date TEXT DATE,
    timezone TEXT,
    created_at TEXT TIMESTAMP NOT NULL,
    updated_at TEXT TIMESTAMP NOT NULL,
    version INTEGER NOT NULL DEFAULT 1
)"""

_PG = """CREATE TABLE IF NOT EXISTS subscriptions (
    id text PRIMARY KEY,
    user_id text NOT NULL,
    name text NOT NULL,
    category text,
    amount numeric(18, 4) NOT NULL,
    currency text NOT NULL,
    billing_cycle text NOT NULL,
    status text NOT NULL,
    next_billing_date date,
    timezone text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    version integer NOT NULL DEFAULT 1
)"""


def demo_table_ddl(postgres: bool) -> str:
    """The demo `subscriptions` table alone, as an application would have created it."""
    return _PG if postgres else _SQLITE


def create_demo_table(engine: Engine) -> None:
    """Create the demo `subscriptions` table if it does not exist."""
    with engine.begin() as conn:
        conn.exec_driver_sql(demo_table_ddl(is_postgres(engine)))


def init_demo_source(engine: Engine) -> CaptureSchema:
    """The demo table plus `init` on it: what `demo`, the benchmarks and tests start from."""
    create_demo_table(engine)
    return init_source(engine, DEFAULT_TABLE)
