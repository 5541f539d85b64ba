"""Indexes for reading the outbox log in the database: `mailops report` and the notebook's explorer count and page
through a million attempts with them instead of reading the whole table.

- ``ix_outbox_retry_of``: the attempts that were retried (a mail counts once, by its last attempt), a few.
- ``ix_outbox_time``: the newest attempts first, a page at a time.
- ``ix_outbox_account_project_time``: attempts per account, project and day, counted in the index.
- SQLite only, as they index what PostgreSQL has no btree for (a JSON column, an expression over it):
  ``ix_outbox_unsent``, every attempt that was not sent with what its summaries need (a small share of the table,
  read without touching the table); ``ix_outbox_recipient_domain``, attempts per recipient domain as written in the
  first To address (the text between its ``@`` and the closing quote of its JSON string), account, project and
  time, so that a domain's attempts are counted, and its distinct spellings found, in the index.

The expression must stay exactly as written here: SQLite uses an index on an expression only for a query that
spells the same expression (``mailops.state.tables.recipient_domain_text``).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_TAIL = "substr(to_addresses, nullif(instr(to_addresses, '@'), 0) + 1)"
RECIPIENT_DOMAIN = f"""substr({_TAIL}, 1, coalesce(nullif(instr({_TAIL}, '"'), 0) - 1, length({_TAIL})))"""


def upgrade() -> None:
    op.create_index(
        "ix_outbox_retry_of",
        "outbox",
        ["retry_of"],
        sqlite_where=sa.text("retry_of IS NOT NULL"),
        postgresql_where=sa.text("retry_of IS NOT NULL"),
    )
    op.create_index("ix_outbox_time", "outbox", ["created_at"])
    op.create_index("ix_outbox_account_project_time", "outbox", ["account", "project", "created_at"])
    if op.get_bind().dialect.name == "sqlite":
        op.create_index(
            "ix_outbox_unsent",
            "outbox",
            ["status", "account", "project", "error_class", "created_at", "to_addresses"],
            sqlite_where=sa.text("status <> 'sent'"),
        )
        op.create_index(
            "ix_outbox_recipient_domain",
            "outbox",
            [sa.text(RECIPIENT_DOMAIN), "account", "project", "created_at"],
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_outbox_recipient_domain", "outbox")
        op.drop_index("ix_outbox_unsent", "outbox")
    op.drop_index("ix_outbox_account_project_time", "outbox")
    op.drop_index("ix_outbox_time", "outbox")
    op.drop_index("ix_outbox_retry_of", "outbox")
