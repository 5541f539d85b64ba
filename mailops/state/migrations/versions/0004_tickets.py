"""Ticket import: tickets, the index of imported messages, and how far each folder was read.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tickets",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("queue", sa.String(100), nullable=True),
        sa.Column("project", sa.String(100), nullable=True),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_tickets_account", "tickets", ["account"])
    op.create_index("ix_tickets_queue_project", "tickets", ["queue", "project"])
    op.create_table(
        "messages",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("folder", sa.String(200), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("uid", sa.BigInteger(), nullable=False),
        sa.Column("dedupe_key", sa.String(64), nullable=False),
        sa.Column("message_id", sa.Text(), nullable=True),
        sa.Column("sender", sa.Text(), nullable=False),
        sa.Column("to_addresses", sa.JSON(), nullable=False),
        sa.Column("cc_addresses", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("raw_sha256", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.Integer(), sa.ForeignKey("tickets.id"), nullable=True),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("server_state", sa.String(16), nullable=False),
        sa.UniqueConstraint("account", "dedupe_key", name="uq_messages_account_key"),
    )
    op.create_index("ix_messages_ticket", "messages", ["ticket_id"])
    op.create_index("ix_messages_server_state", "messages", ["account", "folder", "server_state"])
    op.create_table(
        "mail_sync",
        sa.Column("account", sa.String(320), primary_key=True),
        sa.Column("folder", sa.String(200), primary_key=True),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=False),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("import_since", sa.Date(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mail_sync")
    op.drop_index("ix_messages_server_state", "messages")
    op.drop_index("ix_messages_ticket", "messages")
    op.drop_table("messages")
    op.drop_index("ix_tickets_queue_project", "tickets")
    op.drop_index("ix_tickets_account", "tickets")
    op.drop_table("tickets")
