"""poller_state keeps when a pass that a rate limit ended may be followed, for every process

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("poller_state", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resume_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("poller_state", schema=None) as batch_op:
        batch_op.drop_column("resume_at")
