"""leases: the holding process (host, pid, incarnation) and its heartbeat time.

A lease whose holder process is gone is taken over at once (same host: the pid is dead or
reused), and any other when its heartbeat stops; see `state/leases.py`. All nullable: a row left
by an older release has none and expires by its `expires_at` as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("leases", sa.Column("host", sa.String(255), nullable=True))
    op.add_column("leases", sa.Column("pid", sa.Integer(), nullable=True))
    op.add_column("leases", sa.Column("incarnation", sa.String(200), nullable=True))
    op.add_column("leases", sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for column in ("heartbeat_at", "incarnation", "pid", "host"):
        op.drop_column("leases", column)
