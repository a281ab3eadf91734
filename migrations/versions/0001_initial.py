"""initial schema: events, quarantine, destinations, outbox, poller state

Revision ID: 0001
Revises:
Create Date: 2026-11-23 05:03:06.435723
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


LOG_EVENT_INDEXES: list[tuple[str, list[str], str | None]] = [
    ("ix_log_events_date", ["date"], None),
    ("ix_log_events_type_date", ["type", "date"], None),
    ("ix_log_events_failure_date", ["date"], "category = 'failure'"),
    ("ix_log_events_warning_date", ["date"], "category = 'warning'"),
    ("ix_log_events_user_id_date", ["user_id", "date"], "user_id IS NOT NULL"),
    ("ix_log_events_user_name_date", ["user_name", "date"], "user_name IS NOT NULL"),
    ("ix_log_events_client_id_date", ["client_id", "date"], "client_id IS NOT NULL"),
    ("ix_log_events_connection_date", ["connection", "date"], "connection IS NOT NULL"),
    ("ix_log_events_ip_date", ["ip", "date"], "ip IS NOT NULL"),
    ("ix_log_events_client_name", ["client_name"], "client_name IS NOT NULL"),
    ("ix_log_events_description", ["description"], "description IS NOT NULL"),
]


def upgrade() -> None:
    op.create_table(
        "destinations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("authorization", sa.Text(), nullable=True),
        sa.Column("signing_secret", sa.Text(), nullable=True),
        sa.Column("types", sa.JSON(), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("api_endpoints", sa.JSON(), nullable=True),
        sa.Column("payload", sa.String(length=32), nullable=False),
        sa.Column("send_as_batch", sa.Boolean(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("concurrent_calls", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("backoff_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_destinations")),
        sa.UniqueConstraint("name", name=op.f("uq_destinations_name")),
    )
    op.create_table(
        "log_events",
        sa.Column("log_id", sa.String(length=255), nullable=False),
        sa.Column("date", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=True),
        sa.Column("category", sa.String(length=16), nullable=False),
        sa.Column("user_id", sa.String(length=512), nullable=True),
        sa.Column("user_name", sa.String(length=512), nullable=True),
        sa.Column("client_id", sa.String(length=512), nullable=True),
        sa.Column("client_name", sa.String(length=512), nullable=True),
        sa.Column("connection", sa.String(length=512), nullable=True),
        sa.Column("ip", sa.String(length=512), nullable=True),
        sa.Column("description", sa.String(length=512), nullable=True),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("id_generated", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("log_id", name=op.f("pk_log_events")),
    )
    # The log_events indexes: see the comment on LogEvent.__table_args__ in app/models.py.
    for name, columns, where in LOG_EVENT_INDEXES:
        partial = {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)} if where else {}
        op.create_index(name, "log_events", columns, unique=False, **partial)

    op.create_table(
        "poller_runs",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("start_checkpoint", sa.String(length=255), nullable=True),
        sa.Column("end_checkpoint", sa.String(length=255), nullable=True),
        sa.Column("logs_read", sa.Integer(), nullable=False),
        sa.Column("stored", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("warning", sa.Text(), nullable=True),
        sa.Column("caught_up", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_poller_runs")),
    )
    with op.batch_alter_table("poller_runs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_poller_runs_started_at"), ["started_at"], unique=False)

    op.create_table(
        "poller_state",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("checkpoint", sa.String(length=255), nullable=True),
        sa.Column("start_from", sa.String(length=255), nullable=True),
        sa.Column("last_report_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_poller_state")),
    )
    op.create_table(
        "quarantined_lines",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("line_no", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_quarantined_lines")),
    )
    with op.batch_alter_table("quarantined_lines", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_quarantined_lines_received_at"),
            ["received_at"],
            unique=False,
        )

    op.create_table(
        "outbox_items",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("destination_id", sa.Integer(), nullable=False),
        sa.Column("log_id", sa.String(length=255), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["destinations.id"],
            name=op.f("fk_outbox_items_destination_id_destinations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_items")),
    )
    with op.batch_alter_table("outbox_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_outbox_items_destination_id_status_next_attempt_at"),
            ["destination_id", "status", "next_attempt_at"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_outbox_items_log_id"), ["log_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_outbox_items_status_next_attempt_at"),
            ["status", "next_attempt_at"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_outbox_items_status_next_attempt_at"))
        batch_op.drop_index(batch_op.f("ix_outbox_items_log_id"))
        batch_op.drop_index(batch_op.f("ix_outbox_items_destination_id_status_next_attempt_at"))

    op.drop_table("outbox_items")
    with op.batch_alter_table("quarantined_lines", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_quarantined_lines_received_at"))

    op.drop_table("quarantined_lines")
    op.drop_table("poller_state")
    with op.batch_alter_table("poller_runs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_poller_runs_started_at"))

    op.drop_table("poller_runs")
    for name, _, _ in reversed(LOG_EVENT_INDEXES):
        op.drop_index(name, table_name="log_events")

    op.drop_table("log_events")
    op.drop_table("destinations")
