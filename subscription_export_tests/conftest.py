"""Shared fixtures: real SQLite files, a fresh PostgreSQL schema per test, a Redis namespace.

With SUBSCRIPTION_EXPORT_REQUIRE_SERVICES=1 (CI), a missing PostgreSQL or Redis fails the test
instead of skipping it.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from subscription_export.core.db import dispose_engines, engine_for
from subscription_export.core.settings import Settings
from subscription_export.source.demo_table import init_demo_source

BASE_PG_DSN = os.environ.get(
    "SUBSCRIPTION_EXPORT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test"
)
# Each xdist worker gets its own database (`test_gw0`, ...): the sequencer's and init's advisory
# locks and the `pg_locks` views the product reads are per database, so workers' PostgreSQL
# tests run side by side without seeing each other. A test still gets a fresh schema.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
PG_DSN = f"{BASE_PG_DSN}_{_WORKER}" if _WORKER else BASE_PG_DSN
REDIS_URL = os.environ.get("SUBSCRIPTION_EXPORT_TEST_REDIS", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("SUBSCRIPTION_EXPORT_REQUIRE_SERVICES") == "1"


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({exc})"
    if REQUIRE:
        pytest.fail(message + " and SUBSCRIPTION_EXPORT_REQUIRE_SERVICES=1")
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_database() -> str:
    """This worker's database, created on first use (kept for the next run)."""
    name = PG_DSN.rsplit("/", 1)[1]
    try:
        with psycopg.connect(BASE_PG_DSN, autocommit=True, connect_timeout=5) as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    return PG_DSN


@pytest.fixture
def pg_url(pg_database: str) -> Iterator[str]:
    """A SQLAlchemy URL whose search_path is a brand-new schema, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    yield f"{PG_DSN}?options=-csearch_path%3D{schema}"
    dispose_engines()
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def redis_url() -> Iterator[str]:
    namespace = f"test-{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        _unavailable("Redis", exc)
    yield f"{REDIS_URL}?namespace={namespace}"
    for key in client.scan_iter(f"{namespace}:*"):
        client.delete(key)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto in server mode) for the whole session."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:  # the `test` extra installs moto[server]
        _unavailable("moto", exc)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_url(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://{new bucket}/exports`; credentials and endpoint only in the environment, as in
    production (child processes inherit them)."""
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": moto_endpoint,
    }.items():
        monkeypatch.setenv(name, value)
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/exports"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'source.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def source_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Run the test on a SQLite file and on a PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'source.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def settings(source_url: str, tmp_path: Path) -> Settings:
    init_demo_source(engine_for(source_url, writer=True))
    return Settings(
        source_url=source_url,
        state_url=f"sqlite:///{tmp_path / 'state.db'}",
        export_dir=tmp_path / "exports",
        window_max_changes=1_000,
        window_max_age_s=0.0,
        read_batch_size=256,
    )


@pytest.fixture
def dagster_db(pg_database: str) -> Iterator[str]:
    """A brand-new PostgreSQL database for one Dagster instance, as `postgresql://…`."""
    name = f"dagster_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_DSN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _unavailable("PostgreSQL", exc)
    yield PG_DSN.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
