"""The database is the source of truth: incidents, decisions, step records (with the
captured prior state and timings) and the outbox of Slack messages. SQLite by
default; PostgreSQL for several replicas. Every state change that must happen once
is a conditional UPDATE whose row count says who won.

One repository per kind of record (this package's modules), one Store made of them."""

from __future__ import annotations

from sqlalchemy import insert, inspect, text, update

from playbooks.database import HEALTH_TIMEOUT_S, LOCK_TIMEOUT_S, MIGRATION_LOCK, make_engine
from playbooks.models import HealthBeat, Incident, utcnow
from playbooks.status import FINAL_STATES as FINAL_STATES
from playbooks.status import OPEN_STATES as OPEN_STATES
from playbooks.status import RELEASABLE as RELEASABLE
from playbooks.status import RETRYABLE as RETRYABLE

# The statuses live in playbooks.status; these names are kept for the modules that use them.
from playbooks.store.base import (  # noqa: F401
    APPROVED,
    CONTAINED,
    DENIED,
    EXPIRED,
    FAILED,
    PARTIAL,
    PARTIALLY_RELEASED,
    PENDING,
    RELEASED,
    RUNNING,
)
from playbooks.store.decisions import Decisions
from playbooks.store.evidence import EvidenceFiles
from playbooks.store.fleets import Fleets
from playbooks.store.incidents import Incidents
from playbooks.store.outbox import Outbox
from playbooks.store.revocations import Revocations
from playbooks.store.runs import Runs
from playbooks.store.watches import Watches


class Store(Incidents, Decisions, Fleets, EvidenceFiles, Runs, Revocations, Outbox, Watches):
    """The database's records, one repository each, on one engine."""

    @classmethod
    def from_url(cls, url: str) -> Store:
        store = cls(make_engine(url))
        store.migrate()
        return store

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic), under a lock so that two
        replicas starting together do not race: PostgreSQL's advisory lock, SQLite's
        write lock. A database made before migrations (tables, no version) is taken as
        the baseline and upgraded from there; its rows are kept."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", "playbooks:migrations")
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the file's write lock
            try:
                tables = set(inspect(conn).get_table_names())
                config.attributes["connection"] = conn
                if "incidents" in tables and "alembic_version" not in tables:
                    command.stamp(config, "0001")
                command.upgrade(config, "head")
                conn.commit()
            finally:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"),
                                 {"key": MIGRATION_LOCK})
                    conn.commit()

    def health(self) -> tuple[bool, str]:
        """Whether the database takes a write now, within a short timeout (a lock held
        on the incidents, a full disk, a read-only database all fail it), and why not."""
        try:
            with self.engine.connect() as conn:
                if self.engine.dialect.name == "postgresql":
                    conn.execute(text(f"SET LOCAL lock_timeout = '{HEALTH_TIMEOUT_S}s'"))
                    conn.execute(text(f"SET LOCAL statement_timeout = '{HEALTH_TIMEOUT_S + 1}s'"))
                else:
                    conn.execute(text(f"PRAGMA busy_timeout = {HEALTH_TIMEOUT_S * 1000}"))
                # What a click writes: a row of the incidents (none is changed), and a beat.
                conn.execute(update(Incident).where(Incident.id == "-").values(status=PENDING))
                beat = conn.execute(update(HealthBeat).where(HealthBeat.id == 1)
                                    .values(at=utcnow()))
                if beat.rowcount == 0:
                    conn.execute(insert(HealthBeat).values(id=1, at=utcnow()))
                conn.commit()
                if self.engine.dialect.name != "postgresql":
                    conn.execute(text(f"PRAGMA busy_timeout = {LOCK_TIMEOUT_S * 1000}"))
        except Exception as exc:
            cause = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
            return False, f"cannot take a write: {type(exc).__name__}: {cause}"
        return True, "takes writes"
