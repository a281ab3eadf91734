"""quarantined_lines record the stream body they came in (SHA-256), unique with the line: a body
stored in several transactions and sent again quarantines each of its lines once

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("quarantined_lines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("body_sha256", sa.String(length=64), nullable=True))
    op.create_index(
        "ix_quarantined_lines_body_sha256_line_no",
        "quarantined_lines",
        ["body_sha256", "line_no"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("ix_quarantined_lines_body_sha256_line_no", table_name="quarantined_lines")
    with op.batch_alter_table("quarantined_lines", schema=None) as batch_op:
        batch_op.drop_column("body_sha256")
