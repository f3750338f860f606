"""Incidents: made, found, given their card; and the locks that keep one open request per
target and one writer per revocation policy."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import (
    select,
    text,
    update,
)

from playbooks.models import (
    Incident,
    Message,
    new_incident_id,
    utcnow,
)
from playbooks.status import OPEN_STATES, IncidentStatus
from playbooks.store.base import PENDING, Repository, changed_one

# What a new finding about the same target joins rather than opening another request:
# a request still open, or a containment that holds (even partly, or failed and
# retryable) until it is released.
IN_FORCE = (*OPEN_STATES, IncidentStatus.CONTAINED, IncidentStatus.PARTIAL,
            IncidentStatus.FAILED)


class Incidents(Repository):
    def create_incident(self, *, ttl_seconds: int, **fields: Any) -> Incident:
        now = utcnow()
        inc = Incident(id=new_incident_id(), created_at=now,
                       expires_at=now + timedelta(seconds=ttl_seconds), status=PENDING,
                       **fields)
        with self.session() as s:
            s.add(inc)
        return inc

    def get(self, incident_id: str) -> Incident | None:
        with self.session() as s:
            return s.get(Incident, incident_id)

    def open_for_target(self, target_id: str) -> Incident | None:
        with self.session() as s:
            return s.scalars(
                select(Incident)
                .where(Incident.target_id == target_id, Incident.status.in_(OPEN_STATES))
                .order_by(Incident.created_at.desc())
            ).first()

    def in_force_for_target(self, target_id: str) -> Incident | None:
        """The newest containment of `target_id` that is open or holds (IN_FORCE)."""
        with self.session() as s:
            return s.scalars(
                select(Incident)
                .where(Incident.target_id == target_id, Incident.status.in_(IN_FORCE),
                       Incident.kind.not_in(("release", "fleet")))
                .order_by(Incident.created_at.desc())
            ).first()

    def for_target(self, target_id: str, limit: int = 5) -> list[Incident]:
        with self.session() as s:
            return list(s.scalars(
                select(Incident).where(Incident.target_id == target_id)
                .order_by(Incident.created_at.desc()).limit(limit)
            ))

    def recent(self, limit: int = 10) -> list[Incident]:
        with self.session() as s:
            return list(s.scalars(
                select(Incident).order_by(Incident.created_at.desc()).limit(limit)
            ))

    def set_card(self, incident_id: str, channel_id: str, ts: str, team_id: str = "",
                 messages: Sequence[Message] = (), plan_pending: bool = False) -> None:
        """Where the card is: only a click on this message may decide the incident. With
        `plan_pending`, the card could not show the whole plan: it cannot be approved
        until `messages` (the full plan, in its thread) have been sent."""
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is None:
                return
            inc.channel_id, inc.card_ts = channel_id, ts
            inc.card_posted_at = inc.card_posted_at or utcnow()
            extra = {"team_id": team_id} if team_id else {}
            if plan_pending:
                extra["plan"] = "pending"
            if extra:
                inc.facts = {**(inc.facts or {}), **extra}
            self._add_messages(s, incident_id, messages)

    def add_finding(self, incident_id: str, finding_id: str, note: Callable[[bool], Message],
                    count: int | None = None, severity: float | None = None) -> str:
        """Record a finding about an incident's target with its thread note, once:
        "added" (a finding new to the incident, its note queued), "updated" (a finding
        recorded before whose count changed: a note queued that updates its earlier one)
        or "seen" (nothing written — a message delivered again after a crash, or an
        update that changes nothing). `note(again)` makes the note."""
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is None:
                return "seen"
            facts = dict(inc.facts or {})
            seen = list(facts.get("findings") or [])
            counts = dict(facts.get("finding_counts") or {})
            severities = dict(facts.get("finding_severities") or {})
            if finding_id in seen:
                if count is None or counts.get(finding_id) in (None, count):
                    return "seen"
                outcome = "updated"
            else:
                seen.append(finding_id)
                outcome = "added"
            if count is not None:
                counts[finding_id] = count
            if severity is not None:
                severities[finding_id] = max(severity, severities.get(finding_id, severity))
            facts.update(findings=seen, finding_counts=counts, finding_severities=severities)
            inc.facts = facts
            self._add_messages(s, incident_id, [note(outcome == "updated")])
            return outcome

    @contextmanager
    def target_lock(self, target_id: str) -> Iterator[None]:
        """Held while one replica decides whether a target already has an open request
        and, if not, makes and posts one: a PostgreSQL advisory lock (every replica);
        SQLite serves one process, which holds its own lock around this."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(hashtext(:t))"), {"t": target_id})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(hashtext(:t))"), {"t": target_id})
                conn.commit()

    @contextmanager
    def principal_lock(self, arn: str) -> Iterator[None]:
        """Held while one principal's revocation policy is read, merged and written back:
        two incidents on one role must never overwrite each other's statement. A lock in
        this process, and on PostgreSQL an advisory lock every replica sees (SQLite serves
        one process)."""
        with self._principal_locks[arn]:
            if self.engine.dialect.name != "postgresql":
                yield
                return
            key = "cordon-principal:" + arn
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
                    conn.commit()

    def plan_posted(self, incident_id: str) -> None:
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is not None and (inc.facts or {}).get("plan") == "pending":
                inc.facts = {**(inc.facts or {}), "plan": "posted"}

    def delete_incident(self, incident_id: str) -> None:
        """Only for a request whose card could not be posted: nobody ever saw it (with a
        fleet's card, its members go too)."""
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is not None and inc.status == PENDING and inc.card_ts is None:
                for member in s.scalars(select(Incident).where(
                        Incident.fleet_id == incident_id, Incident.status == PENDING)):
                    s.delete(member)
                s.delete(inc)

    def set_status(self, incident_id: str, status: str, expect: tuple[str, ...]) -> bool:
        with self.session() as s:
            result = s.execute(update(Incident).where(
                Incident.id == incident_id, Incident.status.in_(expect)).values(status=status))
            return changed_one(result)

    def latest_containment(self, target_id: str) -> Incident | None:
        with self.session() as s:
            return s.scalars(
                select(Incident)
                .where(Incident.target_id == target_id, Incident.kind != "release")
                .order_by(Incident.created_at.desc())
            ).first()

    def open_release_for(self, parent_id: str) -> Incident | None:
        with self.session() as s:
            return s.scalars(select(Incident).where(
                Incident.parent_id == parent_id, Incident.status.in_(OPEN_STATES))).first()
