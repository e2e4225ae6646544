"""destination_tables: the table each destination was last delivered from.

A destination without a `table` key is fed by the first captured table; this row lets delivery
refuse a reordered SUBSCRIPTION_EXPORT_TABLES that would switch it to another table. Empty
after the upgrade: each destination's next delivery records its table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "destination_tables",
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("table_name", sa.String(200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("destination_tables")
