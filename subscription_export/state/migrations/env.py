"""Alembic environment of the state database, run in-process only (`state.migrate`): the
connection comes in `config.attributes["connection"]`, already inside the transaction (and, on
PostgreSQL, holding the advisory lock) that the whole upgrade commits with."""

from alembic import context

from subscription_export.state.migrate import VERSION_TABLE, include_name
from subscription_export.state.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "state migrations run through subscription_export.state.migrate (upgrade(engine), or"
        " alembic.command with migrate.alembic_config(connection)), not the alembic CLI"
    )

context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    include_name=include_name,
)
with context.begin_transaction():
    context.run_migrations()
