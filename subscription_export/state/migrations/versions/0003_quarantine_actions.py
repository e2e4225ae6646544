"""Quarantine replay and discard (issue 12 item 5): a status per quarantined change, the audit
of who replayed or discarded what, and what each destination got of a recovered change.

Existing quarantine rows become `open`, which is what they were.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("quarantine") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="open"))
        batch.add_column(sa.Column("action_id", sa.Integer(), nullable=True))
    op.create_table(
        "quarantine_actions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("window_key", sa.String(41), nullable=False),
        sa.Column("lsns", sa.Text(), nullable=False),
        sa.Column("recovered", sa.Text(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
    )
    op.create_index("quarantine_actions_by_window", "quarantine_actions", ["window_key", "id"])
    op.create_table(
        "quarantine_deliveries",
        sa.Column("destination", sa.String(100), primary_key=True),
        sa.Column("lsn", sa.BigInteger(), primary_key=True),
        sa.Column("window_key", sa.String(41), nullable=False),
        sa.Column("subscription_id", sa.String(200), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("quarantine_deliveries")
    op.drop_index("quarantine_actions_by_window", table_name="quarantine_actions")
    op.drop_table("quarantine_actions")
    with op.batch_alter_table("quarantine") as batch:
        batch.drop_column("action_id")
        batch.drop_column("status")
