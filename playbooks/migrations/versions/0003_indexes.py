"""Indexes for the queries that scan: recent incidents, unsent messages, steps by name
and status.

Revision ID: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_incidents_created_at", "incidents", ["created_at"], unique=False)
    op.create_index("ix_steps_name_status", "steps", ["name", "status"], unique=False)
    op.create_index("ix_outbox_unsent", "outbox", ["sent_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_outbox_unsent", table_name="outbox")
    op.drop_index("ix_steps_name_status", table_name="steps")
    op.drop_index("ix_incidents_created_at", table_name="incidents")
