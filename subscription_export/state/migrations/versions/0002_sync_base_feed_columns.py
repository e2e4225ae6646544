"""sync_base: the last feed record of the subscription and the version it carries (6bb99c7).

A later remote edit carrying the same version was made on that image, so it is the three-way
base of that edit. Both columns are nullable: existing bases have no feed record yet and get one
with the next feed change of their subscription.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sync_base", sa.Column("feed_record", sa.Text(), nullable=True))
    op.add_column("sync_base", sa.Column("feed_version", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("sync_base", "feed_version")
    op.drop_column("sync_base", "feed_record")
