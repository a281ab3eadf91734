"""outbox_items count the calls in flight per destination, so that concurrent_calls holds across
workers: lease_calls, the calls a claim may have open, on its first row, and an index of those rows

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-24 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_items", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_calls", sa.Integer(), nullable=True))
    where = sa.text("lease_calls IS NOT NULL")
    op.create_index(
        "ix_outbox_items_claims",
        "outbox_items",
        ["destination_id"],
        sqlite_where=where,
        postgresql_where=where,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_items_claims", table_name="outbox_items")
    with op.batch_alter_table("outbox_items", schema=None) as batch_op:
        batch_op.drop_column("lease_calls")
