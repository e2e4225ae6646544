"""sync_field_provenance: the source row version a recorded value is in from.

When a remote's base image and another system's assertion of a field carry the same time, the
version says whether the remote's user saw the assertion (docs/conflicts.md, "Three systems:
provenance"). Nullable: a row left by an older release has none and is decided by time alone.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sync_field_provenance", sa.Column("version", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("sync_field_provenance", "version")
