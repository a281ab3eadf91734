"""poller_state keeps the Management API token, so that `logrelay poll --once` from cron reuses it

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 17:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS: list[tuple[str, sa.types.TypeEngine[Any]]] = [
    ("access_token", sa.Text()),
    ("access_token_key", sa.String(length=64)),
    ("access_token_expires_at", sa.DateTime(timezone=True)),
    ("access_token_renew_at", sa.DateTime(timezone=True)),
]


def upgrade() -> None:
    # Batch mode: SQLite rebuilds the table where it cannot alter it; PostgreSQL alters in place.
    with op.batch_alter_table("poller_state", schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("poller_state", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
