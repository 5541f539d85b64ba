"""OAuth token caches (encrypted) and consents.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "token_caches",
        sa.Column("name", sa.String(400), primary_key=True),
        sa.Column("ciphertext", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "consents",
        sa.Column("address", sa.String(320), primary_key=True),
        sa.Column("identity", sa.String(320), nullable=False),
        sa.Column("cache", sa.String(400), nullable=False),
        sa.Column("consented_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("consents")
    op.drop_table("token_caches")
