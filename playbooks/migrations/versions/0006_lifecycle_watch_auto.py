"""Lifecycle times (card posted, first change, cut verified), automatic containment
(the rule that decided, its review and reminder) and the CloudTrail watch after a cut.

Revision ID: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("card_posted_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("first_change_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("cut_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("auto_rule", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("reminded_at", sa.DateTime(), nullable=True))
    op.create_table(
        "watches",
        sa.Column("incident_id", sa.String(length=16), sa.ForeignKey("incidents.id"),
                  primary_key=True),
        sa.Column("subjects", sa.JSON(), nullable=False),
        sa.Column("regions", sa.JSON(), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.Column("until", sa.DateTime(), nullable=False),
        sa.Column("next_check_at", sa.DateTime(), nullable=False),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("seen", sa.JSON(), nullable=False),
        sa.Column("events", sa.Integer(), nullable=False),
        sa.Column("errors", sa.JSON(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_watches_next_check_at", "watches", ["next_check_at"])


def downgrade() -> None:
    op.drop_index("ix_watches_next_check_at", table_name="watches")
    op.drop_table("watches")
    with op.batch_alter_table("incidents") as batch:
        for column in ("reminded_at", "reviewed_at", "auto_rule", "cut_at", "first_change_at",
                       "card_posted_at"):
            batch.drop_column(column)
