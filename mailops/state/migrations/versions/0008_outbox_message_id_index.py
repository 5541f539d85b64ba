"""An index on the outbox's Message-IDs: `mailops outbox import` looks up each row's key there (a million rows
imported again would otherwise scan the table two thousand times), and a bounce its mail's Message-ID.

Revision ID: 0008
Revises: 0007
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_message_id", "outbox", ["message_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_message_id", "outbox")
