"""outbox_items remember the failed batch that carried them, so that its retries keep its webhook-id

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 20:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_id", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox_items", schema=None) as batch_op:
        batch_op.drop_column("batch_id")
