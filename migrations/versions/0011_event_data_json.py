"""log_events.data is json on PostgreSQL, not jsonb: kept as the text it was stored with, and not
parsed into jsonb on every insert (nothing queries inside it)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-24 12:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE log_events ALTER COLUMN data TYPE json USING data::json")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE log_events ALTER COLUMN data TYPE jsonb USING data::jsonb")
