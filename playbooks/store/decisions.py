"""Decisions on a card: approvals (one or two), denials, refusals, expiry, retry."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import (
    exists,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from playbooks.models import (
    CARD,
    ApprovalVote,
    Decision,
    Incident,
    Message,
    utcnow,
)
from playbooks.status import OPEN_STATES, RETRYABLE
from playbooks.store.base import APPROVED, DENIED, EXPIRED, PENDING, Repository, changed_one


class Decisions(Repository):
    def decide(self, incident_id: str, user_id: str, approve: bool) -> bool:
        """pending → approved/denied, once. False when someone else decided first or
        the request expired."""
        now = utcnow()
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.status == PENDING,
                       Incident.expires_at > now)
                .values(status=APPROVED if approve else DENIED, decided_by=user_id,
                        decided_at=now)
            )
            won = changed_one(result)
            s.add(Decision(incident_id=incident_id, user_id=user_id,
                           action="approve" if approve else "deny",
                           outcome="accepted" if won else "too late", at=now))
            if won:
                self._add_messages(s, incident_id, [(CARD, {})])
        return won

    def vote(self, incident_id: str, user_id: str) -> tuple[bool, bool, list[str]]:
        """Count this person's approval once; when enough distinct approvers agree,
        pending → approved (once). Returns (approved now, counted now, approvers)."""
        now = utcnow()
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is None or inc.status != PENDING or inc.expires_at <= now:
                return False, False, self.votes(incident_id)
            required = inc.approvals_required
        try:
            with self.session() as s:
                s.add(ApprovalVote(incident_id=incident_id, user_id=user_id, at=now))
            outcome = "counted"
        except IntegrityError:
            outcome = "already counted"
        voters = self.votes(incident_id)
        with self.session() as s:
            won = False
            if len(voters) >= required:
                result = s.execute(
                    update(Incident)
                    .where(Incident.id == incident_id, Incident.status == PENDING,
                           Incident.expires_at > now)
                    .values(status=APPROVED, decided_by=user_id, decided_at=now))
                won = changed_one(result)
            s.add(Decision(incident_id=incident_id, user_id=user_id, action="approve",
                           outcome="accepted" if won else outcome))
            if won or outcome == "counted":
                self._add_messages(s, incident_id, [(CARD, {})])
        return won, outcome == "counted", voters

    def votes(self, incident_id: str) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(ApprovalVote.user_id)
                                  .where(ApprovalVote.incident_id == incident_id)
                                  .order_by(ApprovalVote.id)))

    def record_refusal(self, incident_id: str, user_id: str, action: str, why: str) -> None:
        with self.session() as s:
            s.add(Decision(incident_id=incident_id, user_id=user_id, action=action,
                           outcome=why[:64]))

    def decisions(self, incident_id: str) -> list[Decision]:
        with self.session() as s:
            return list(s.scalars(select(Decision).where(Decision.incident_id == incident_id)
                                  .order_by(Decision.id)))

    def expire_due(self, messages: Sequence[Message] = ()) -> list[str]:
        now = utcnow()
        with self.session() as s:
            due = list(s.scalars(select(Incident.id).where(
                Incident.status == PENDING, Incident.expires_at <= now)))
        expired = []
        for incident_id in due:
            with self.session() as s:
                result = s.execute(update(Incident).where(
                    Incident.id == incident_id, Incident.status == PENDING
                ).values(status=EXPIRED, finished_at=now))
                if changed_one(result):
                    expired.append(incident_id)
                    self._add_messages(s, incident_id, [*messages, (CARD, {})])
        return expired

    def retry(self, incident_id: str, user_id: str, messages: Sequence[Message] = ()) -> bool:
        """failed / partially contained → approved, once; finished steps stay done."""
        release = aliased(Incident)
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.status.in_(RETRYABLE),
                       # Containment and undo never act on the instance at once.
                       ~exists(select(release.id).where(release.parent_id == incident_id,
                                                        release.status.in_(OPEN_STATES))))
                .values(status=APPROVED, finished_at=None, summary="")
            )
            won = changed_one(result)
            s.add(Decision(incident_id=incident_id, user_id=user_id, action="retry",
                           outcome="accepted" if won else "not retryable"))
            if won:
                self._add_messages(s, incident_id, [*messages, (CARD, {})])
        return won
