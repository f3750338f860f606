"""Alembic's environment: Cordon runs its migrations itself (`Store.migrate`), on the
connection it passes in, under a lock so that replicas starting together do not race."""

from __future__ import annotations

from alembic import context

from playbooks.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
