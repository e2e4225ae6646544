"""The metrics store under test, on a SQLite file and on a fresh PostgreSQL schema."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from subscription_export.core.db import engine_for


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def metrics_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    if request.param == "sqlite":
        return engine_for(f"sqlite:///{tmp_path / 'state.db'}", writer=True)
    return engine_for(request.getfixturevalue("pg_url"), writer=True)


@pytest.fixture
def sqlite_metrics(tmp_path: Path) -> Engine:
    return engine_for(f"sqlite:///{tmp_path / 'state.db'}", writer=True)
