"""The PostgreSQL storage of production Dagster instances (`deploy/dagster.postgres.yaml`).

SQLAlchemy 2.1 maps `postgresql://` to psycopg 3, and dagster-postgres then fails on its first
event write (`NOTIFY run_events, $1`: psycopg 3 sends the payload as a server-side bind
parameter, which NOTIFY does not accept). Runs were created but never launched. This storage
takes any PostgreSQL URL form and always gives dagster-postgres the psycopg2 driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dagster_postgres import DagsterPostgresStorage
from dagster_postgres.utils import get_token_provider_from_config, pg_url_from_config

from subscription_export.core.db import psycopg2_url

if TYPE_CHECKING:  # Dagster keeps it private; only its type is needed here
    from dagster._serdes import ConfigurableClassData


class PostgresStorage(DagsterPostgresStorage):
    """dagster-postgres storage for `postgresql://`, `postgres://` or `postgresql+psycopg://`
    URLs alike; configured as `storage: custom:` with the fields of `storage: postgres:`."""

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> PostgresStorage:
        return cls(
            inst_data=inst_data,
            postgres_url=psycopg2_url(pg_url_from_config(config_value)),
            should_autocreate_tables=config_value.get("should_autocreate_tables", True),
            token_provider=get_token_provider_from_config(config_value),
        )
