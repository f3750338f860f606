"""The outbox of Slack messages: written with the change they report, claimed by one
sender at a time, marked sent once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    or_,
    select,
    update,
)

from playbooks.models import (
    SUPERSEDED,
    Message,
    OutboxMessage,
    utcnow,
)
from playbooks.store.base import Repository, changed_one


class Outbox(Repository):
    def enqueue(self, incident_id: str, kind: str, payload: dict[str, Any]) -> int:
        with self.session() as s:
            msg = OutboxMessage(incident_id=incident_id, kind=kind, payload=payload)
            s.add(msg)
            s.flush()
            return msg.id

    def enqueue_many(self, incident_id: str, messages: Sequence[Message]) -> None:
        with self.session() as s:
            self._add_messages(s, incident_id, messages)

    def unsent(self, incident_id: str | None = None, limit: int = 100) -> list[OutboxMessage]:
        with self.session() as s:
            q = select(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
            if incident_id is not None:
                q = q.where(OutboxMessage.incident_id == incident_id)
            return list(s.scalars(q.order_by(OutboxMessage.id).limit(limit)))

    def claim_message(self, message_id: int, seconds: int = 30, owner: str = "") -> bool:
        """Take the right to send a message for a while, so that two senders (threads or
        replicas) never send it twice."""
        now = utcnow()
        with self.session() as s:
            result = s.execute(update(OutboxMessage).where(
                OutboxMessage.id == message_id, OutboxMessage.sent_at.is_(None),
                or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
            ).values(attempts=OutboxMessage.attempts + 1,
                     claimed_until=now + timedelta(seconds=seconds), claimed_by=owner or None))
            return changed_one(result)

    def claimants(self) -> set[str]:
        """Who holds a claim on an unsent message now."""
        with self.session() as s:
            return {c for c in s.scalars(select(OutboxMessage.claimed_by).distinct().where(
                OutboxMessage.sent_at.is_(None), OutboxMessage.claimed_by.is_not(None),
                OutboxMessage.claimed_until > utcnow())) if c}

    def release_claims(self, owners: Sequence[str]) -> int:
        """Release the claims of these (dead) senders: their messages are sent — after a
        look in the thread, since their send may have landed — without waiting for the
        claims to lapse."""
        if not owners:
            return 0
        with self.session() as s:
            result = s.execute(update(OutboxMessage).where(
                OutboxMessage.sent_at.is_(None), OutboxMessage.claimed_by.in_(list(owners))
            ).values(claimed_until=None))
            return int(getattr(result, "rowcount", 0) or 0)

    def mark_sent(self, message_id: int) -> bool:
        with self.session() as s:
            result = s.execute(update(OutboxMessage).where(
                OutboxMessage.id == message_id, OutboxMessage.sent_at.is_(None)
            ).values(sent_at=utcnow()))
            return changed_one(result)

    def mark_superseded(self, message_id: int) -> bool:
        """A card update that a later one of the same card replaces: never sent, and done
        with (`sent_at` closes it; `last_error` says it was not sent)."""
        with self.session() as s:
            result = s.execute(update(OutboxMessage).where(
                OutboxMessage.id == message_id, OutboxMessage.sent_at.is_(None)
            ).values(sent_at=utcnow(), last_error=SUPERSEDED))
            return changed_one(result)

    def mark_failed(self, message_id: int, error: str, retry_in: float = 0) -> None:
        """Not sent (or not known to be): tried again after `retry_in` seconds."""
        with self.session() as s:
            s.execute(update(OutboxMessage).where(OutboxMessage.id == message_id).values(
                last_error=error[:500],
                claimed_until=utcnow() + timedelta(seconds=retry_in) if retry_in else None))
