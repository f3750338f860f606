"""Decisions on a card: approvals (one or two), denials, refusals, expiry, retry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta

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
from playbooks.store.base import (
    APPROVED,
    DENIED,
    EXPIRED,
    PENDING,
    RELEASED,
    Repository,
    changed_one,
)


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

    # automatic containment -------------------------------------------------------------

    def auto_decide(self, incident_id: str, rule: str, decider: str) -> bool:
        """pending → approved by a CORDON_AUTO_CONTAIN rule, once; the decision is recorded
        as the rule's."""
        now = utcnow()
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.status == PENDING)
                .values(status=APPROVED, decided_by=decider, decided_at=now,
                        auto_rule=rule[:200]))
            won = changed_one(result)
            s.add(Decision(incident_id=incident_id, user_id=decider, action="approve",
                           outcome=f"rule {rule}"[:64] if won else "too late", at=now))
        return won

    def review_auto(self, incident_id: str, user_id: str, action: str) -> bool:
        """A person keeps or releases an automatic containment: the first review wins (a
        second click, or a click on another replica, is told it was reviewed)."""
        now = utcnow()
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.auto_rule.is_not(None),
                       Incident.reviewed_at.is_(None))
                .values(reviewed_at=now))
            won = changed_one(result)
            s.add(Decision(incident_id=incident_id, user_id=user_id, action=action,
                           outcome="accepted" if won else "already reviewed", at=now))
            if won:
                self._add_messages(s, incident_id, [(CARD, {})])
        return won

    def remind_unreviewed(self, older_than_seconds: float, message: Callable[[Incident], Message]
                          ) -> list[str]:
        """Automatic containments nobody kept or released within the time: each reminded
        once (the reminder written with the mark)."""
        cutoff = utcnow() - timedelta(seconds=older_than_seconds)
        with self.session() as s:
            due = list(s.scalars(select(Incident).where(
                Incident.auto_rule.is_not(None), Incident.reviewed_at.is_(None),
                Incident.reminded_at.is_(None), Incident.decided_at <= cutoff,
                Incident.status.not_in((DENIED, EXPIRED, RELEASED)))))
        reminded = []
        for incident in due:
            with self.session() as s:
                result = s.execute(update(Incident).where(
                    Incident.id == incident.id, Incident.reminded_at.is_(None),
                    Incident.reviewed_at.is_(None)).values(reminded_at=utcnow()))
                if changed_one(result):
                    self._add_messages(s, incident.id, [message(incident)])
                    reminded.append(incident.id)
        return reminded

    def auto_contained_before(self, target_id: str, finding_id: str) -> Incident | None:
        """An automatic containment of this target made for this finding, ever."""
        with self.session() as s:
            for incident in s.scalars(select(Incident).where(
                    Incident.target_id == target_id, Incident.auto_rule.is_not(None))):
                if finding_id in ((incident.facts or {}).get("findings") or []):
                    return incident
        return None
