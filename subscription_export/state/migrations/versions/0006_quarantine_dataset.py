"""quarantine.dataset: the export (one per captured table) a quarantined change belongs to.

Several tables share one change log and one window; each table's export replaces only its own
open entries when it re-exports the window. Nullable: an entry left by an older release has
none and belongs to `subscription_changes`, the one dataset there was.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("quarantine", sa.Column("dataset", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("quarantine", "dataset")
