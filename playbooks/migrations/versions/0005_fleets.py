"""Fleets: one card for many instances, each instance an incident of its own that names
the fleet it belongs to.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("fleet_id", sa.String(length=16), nullable=True))
        batch.create_index("ix_incidents_fleet_id", ["fleet_id"])


def downgrade() -> None:
    with op.batch_alter_table("incidents") as batch:
        batch.drop_index("ix_incidents_fleet_id")
        batch.drop_column("fleet_id")
