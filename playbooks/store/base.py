"""What every part of the store shares: the session, the database's clock, conditional
writes, and the outbox rows written inside another change's transaction."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    DateTime,
    Engine,
    func,
    literal,
)
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from playbooks.models import (
    Message,
    OutboxMessage,
    utcnow,
)
from playbooks.status import IncidentStatus

PENDING, APPROVED, RUNNING = (IncidentStatus.PENDING, IncidentStatus.APPROVED,
                              IncidentStatus.RUNNING)
CONTAINED, PARTIAL, FAILED = (IncidentStatus.CONTAINED, IncidentStatus.PARTIAL,
                              IncidentStatus.FAILED)
DENIED, EXPIRED = IncidentStatus.DENIED, IncidentStatus.EXPIRED
RELEASED, PARTIALLY_RELEASED = IncidentStatus.RELEASED, IncidentStatus.PARTIALLY_RELEASED

class Refused(Exception):
    """A conditional write that did not match: the transaction is rolled back."""


def changed_one(result: Any) -> bool:
    """Whether a conditional UPDATE changed its row: the one place that says who won."""
    return int(result.rowcount) == 1


class Repository:
    """The database behind every part of the store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._principal_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    def _now(self, plus_seconds: float = 0) -> ColumnElement[datetime]:
        """Now, by the database's clock on PostgreSQL (replicas on several hosts compare
        leases by one clock); SQLite lives on one host, whose clock it is."""
        if self.engine.dialect.name == "postgresql":
            now: ColumnElement[datetime] = func.timezone("UTC", func.clock_timestamp(),
                                                         type_=DateTime())
            return now + timedelta(seconds=plus_seconds) if plus_seconds else now
        return literal(utcnow() + timedelta(seconds=plus_seconds), DateTime())

    @staticmethod
    def _add_messages(s: Session, incident_id: str, messages: Sequence[Message]) -> None:
        """A message whose payload names another incident (`for_incident`: a fleet member's
        progress, said on its fleet's card) goes to that incident's thread, in order with
        its other messages."""
        for kind, payload in messages:
            s.add(OutboxMessage(incident_id=payload.get("for_incident") or incident_id,
                                kind=kind, payload=payload))

    @staticmethod
    def transient(row: Any, **changes: Any) -> Any:
        """A detached copy of a row with some values changed: what it will be once a
        write lands (to render the message written in that same transaction)."""
        copy = type(row)(**{c.key: getattr(row, c.key) for c in row.__table__.columns})
        for key, value in changes.items():
            setattr(copy, key, value)
        return copy
