"""drop the client_name and description indexes: no query uses them, and every event paid for them

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 08:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROPPED: list[tuple[str, str]] = [
    ("ix_log_events_client_name", "client_name"),
    ("ix_log_events_description", "description"),
]


def upgrade() -> None:
    for name, _ in DROPPED:
        op.drop_index(name, table_name="log_events")


def downgrade() -> None:
    for name, column in DROPPED:
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, "log_events", [column], sqlite_where=where, postgresql_where=where)
