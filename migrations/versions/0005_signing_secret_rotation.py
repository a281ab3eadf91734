"""destinations keep the signing secret they rotated out, and until when it still signs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 18:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS: list[tuple[str, sa.types.TypeEngine[Any]]] = [
    ("previous_signing_secret", sa.Text()),
    ("previous_secret_expires_at", sa.DateTime(timezone=True)),
]


def upgrade() -> None:
    # Batch mode: SQLite rebuilds the table where it cannot alter it; PostgreSQL alters in place.
    with op.batch_alter_table("destinations", schema=None) as batch_op:
        for name, type_ in COLUMNS:
            batch_op.add_column(sa.Column(name, type_, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("destinations", schema=None) as batch_op:
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
