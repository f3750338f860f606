"""The engine: SQLite (one process) or PostgreSQL (replicas), with the timeouts that keep
a stuck database from hanging a click."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event

LOCK_TIMEOUT_S = 5
STATEMENT_TIMEOUT_S = 15
HEALTH_TIMEOUT_S = 2
MIGRATION_LOCK = 0x436F72646F6E  # "Cordon": the advisory lock the migration holds


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False,
                                                  "timeout": LOCK_TIMEOUT_S})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)

    @event.listens_for(engine, "connect")
    def _timeouts(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_S}s'")
        cur.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT_S}s'")
        cur.close()
        dbapi_conn.commit()

    return engine


