"""index outbox_items by (destination_id, log_id) instead of log_id: replay checks a page of log ids
against one destination's rows, and no query looks a log id up across destinations

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 17:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_outbox_items_destination_id_log_id", "outbox_items", ["destination_id", "log_id"], unique=False
    )
    op.drop_index("ix_outbox_items_log_id", table_name="outbox_items")


def downgrade() -> None:
    op.create_index("ix_outbox_items_log_id", "outbox_items", ["log_id"], unique=False)
    op.drop_index("ix_outbox_items_destination_id_log_id", table_name="outbox_items")
