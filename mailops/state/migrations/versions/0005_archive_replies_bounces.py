"""The archive, auto-replies and bounces: archive state and kept raw file on the message index, the
auto-reply claims (one per sender and day, by a unique key), and the delivery status notifications
matched to the outbox.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.add_column(sa.Column("archive_state", sa.String(10), nullable=True))
        # Every message imported before this revision is a ticket's, and its file is kept.
        batch.add_column(sa.Column("raw_kept", sa.Boolean(), nullable=False, server_default=sa.true()))
    op.create_index("ix_messages_archive", "messages", ["account", "archive_state", "received_at"])
    op.create_index("ix_messages_raw", "messages", ["raw_sha256"])
    op.create_table(
        "autoreplies",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("recipient", sa.String(320), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("scope", sa.String(64), nullable=False),
        sa.Column("message_row", sa.Integer(), sa.ForeignKey("messages.id"), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.UniqueConstraint("account", "recipient", "day", "scope", name="uq_autoreplies_claim"),
    )
    op.create_table(
        "bounces",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("message_row", sa.Integer(), sa.ForeignKey("messages.id"), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("original_message_id", sa.Text(), nullable=True),
        sa.Column("envelope_id", sa.Text(), nullable=True),
        sa.Column("recipient", sa.Text(), nullable=False),
        sa.Column("action", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=True),
        sa.Column("diagnostic", sa.Text(), nullable=True),
        sa.Column("reporting_mta", sa.Text(), nullable=True),
        sa.Column("error_class", sa.String(40), nullable=True),
        sa.Column("recipients", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_bounces_account", "bounces", ["account"])
    op.create_index("ix_bounces_outbox", "bounces", ["outbox_id"])


def downgrade() -> None:
    op.drop_index("ix_bounces_outbox", "bounces")
    op.drop_index("ix_bounces_account", "bounces")
    op.drop_table("bounces")
    op.drop_table("autoreplies")
    op.drop_index("ix_messages_raw", "messages")
    op.drop_index("ix_messages_archive", "messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("raw_kept")
        batch.drop_column("archive_state")
    # The older schema knows no `bounced`: such an attempt was sent, as far as it can tell.
    op.execute("UPDATE outbox SET status = 'sent' WHERE status = 'bounced'")
