"""Runs and their steps: the lease that lets one worker run an incident, and each step's
record, written only while that worker holds the lease."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import aliased
from sqlalchemy.sql.elements import ColumnElement

from playbooks.models import (
    FILE,
    Evidence,
    Incident,
    Message,
    OutboxMessage,
    Revocation,
    StepRecord,
    utcnow,
)
from playbooks.status import OPEN_STATES
from playbooks.store.base import APPROVED, RUNNING, Refused, Repository, changed_one


class Runs(Repository):
    def _claimable(self, dead_owners: tuple[str, ...] = ()) -> ColumnElement[bool]:
        """Approved and not started, or running under a lease that lapsed or whose owner
        is known to be dead; never a containment while its release runs, nor a release
        while its containment runs."""
        other = aliased(Incident)
        lapsed = (Incident.status == RUNNING) & (Incident.lease_until < self._now())
        if dead_owners:
            lapsed = lapsed | ((Incident.status == RUNNING)
                               & Incident.lease_owner.in_(dead_owners))
        busy_release = exists(select(other.id).where(other.parent_id == Incident.id,
                                                     other.status.in_((APPROVED, RUNNING))))
        busy_parent = exists(select(other.id).where(other.id == Incident.parent_id,
                                                    other.status.in_(OPEN_STATES)))
        return or_(Incident.status == APPROVED, lapsed) & ~busy_release & ~busy_parent

    def claim_run(self, incident_id: str, owner: str, lease_seconds: float,
                  dead_owners: tuple[str, ...] = (),
                  messages: Sequence[Message] = ()) -> bool:
        """Take the right to run: approved, or running under a lease that lapsed (or
        whose owner is dead). Exactly one worker wins."""
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, self._claimable(dead_owners))
                .values(status=RUNNING, lease_owner=owner,
                        lease_until=self._now(lease_seconds))
            )
            won = changed_one(result)
            if won:
                s.execute(update(Incident).where(Incident.id == incident_id,
                                                 Incident.started_at.is_(None))
                          .values(started_at=utcnow()))
                self._add_messages(s, incident_id, messages)
            return won

    def renew_lease(self, incident_id: str, owner: str, lease_seconds: float) -> bool:
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.lease_owner == owner,
                       Incident.status == RUNNING)
                .values(lease_until=self._now(lease_seconds))
            )
            return changed_one(result)

    def finish_run(self, incident_id: str, owner: str, status: str, summary: str,
                   messages: Sequence[Message] = (), **times: datetime | None) -> bool:
        """Only while `owner` holds the run; its final messages in the same transaction.
        `times`: the lifecycle's columns (finished_at, first_change_at, cut_at)."""
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.lease_owner == owner,
                       Incident.status == RUNNING)
                .values(status=status, summary=summary, lease_owner=None, lease_until=None,
                        **{"finished_at": utcnow(), **times})
            )
            won = changed_one(result)
            if won:
                self._add_messages(s, incident_id, messages)
            return won

    def gauges(self) -> tuple[int, int]:
        """(outbox messages not sent yet, runs approved or running): what /metrics shows."""
        with self.session() as s:
            unsent = s.scalar(select(func.count()).select_from(OutboxMessage)
                              .where(OutboxMessage.sent_at.is_(None)))
            running = s.scalar(select(func.count()).select_from(Incident)
                               .where(Incident.status.in_((APPROVED, RUNNING)),
                                      Incident.kind != "fleet"))
            return int(unsent or 0), int(running or 0)

    def running_owners(self) -> dict[str, str]:
        """Running incidents and the worker that holds each."""
        with self.session() as s:
            return {i: o or "" for i, o in s.execute(
                select(Incident.id, Incident.lease_owner).where(Incident.status == RUNNING))}

    def runs_to_resume(self, dead_owners: tuple[str, ...] = ()) -> list[str]:
        """Approved runs nobody started, and running ones whose worker stopped."""
        with self.session() as s:
            return list(s.scalars(select(Incident.id).where(self._claimable(dead_owners))
                                  .order_by(Incident.decided_at)))

    def ensure_steps(self, incident_id: str, names: list[str]) -> list[StepRecord]:
        with self.session() as s:
            existing = {r.name: r for r in s.scalars(
                select(StepRecord).where(StepRecord.incident_id == incident_id))}
            for position, name in enumerate(names):
                if name not in existing:
                    rec = StepRecord(incident_id=incident_id, position=position, name=name)
                    s.add(rec)
                    existing[name] = rec
        return self.steps(incident_id)

    def steps(self, incident_id: str) -> list[StepRecord]:
        with self.session() as s:
            return list(s.scalars(select(StepRecord).where(StepRecord.incident_id == incident_id)
                                  .order_by(StepRecord.position)))

    def update_step(self, step_id: int, owner: str | None = None, **values: Any) -> bool:
        """With `owner`, only while that worker holds the run's lease: False otherwise,
        and nothing is written."""
        if owner is not None:
            return self.update_steps(owner, {step_id: values})
        with self.session() as s:
            return changed_one(s.execute(update(StepRecord).where(StepRecord.id == step_id)
                                  .values(**values)))

    def update_steps(self, owner: str, values: dict[int, dict[str, Any]]) -> bool:
        """Several steps' records in one transaction (a run's hot path writes once), only
        while `owner` holds the run: False otherwise, and nothing is written."""
        try:
            with self.session() as s:
                for step_id, row in values.items():
                    query = update(StepRecord).where(StepRecord.id == step_id).where(exists(
                        select(Incident.id).where(Incident.id == StepRecord.incident_id,
                                                  Incident.lease_owner == owner,
                                                  Incident.status == RUNNING)))
                    if not changed_one(s.execute(query.values(**row))):
                        raise Refused  # rolls the whole write back
        except Refused:
            return False
        return True

    def finish_step(self, step_id: int, owner: str | None, incident_id: str,
                    values: dict[str, Any], messages: Sequence[Message] = (),
                    evidence: Sequence[tuple[str, str, bytes]] = (),
                    revocations: Sequence[dict[str, Any]] = ()) -> bool:
        """A step's record, its thread reply, its evidence files (name, media type,
        content) with their uploads, and its revocations: one transaction, written only
        while `owner` holds the run."""
        query = update(StepRecord).where(StepRecord.id == step_id)
        if owner is not None:
            query = query.where(exists(select(Incident.id).where(
                Incident.id == StepRecord.incident_id, Incident.lease_owner == owner,
                Incident.status == RUNNING)))
        with self.session() as s:
            result = s.execute(query.values(**values))
            won = changed_one(result)
            if not won:
                return False
            self._add_messages(s, incident_id, messages)
            step = values.get("name") or s.get(StepRecord, step_id).name  # type: ignore[union-attr]
            for name, media_type, content in evidence:
                row = Evidence(incident_id=incident_id, step=step, name=name,
                               media_type=media_type, content=content, size=len(content),
                               sha256=hashlib.sha256(content).hexdigest())
                s.add(row)
                s.flush()
                self._add_messages(s, incident_id, [(FILE, {"evidence_id": row.id})])
            for rec in revocations:
                s.add(Revocation(incident_id=incident_id, kind=rec["kind"],
                                 principal=rec["principal"], policy=rec["policy"],
                                 sid=rec.get("sid"), cutoff=rec["cutoff"],
                                 remove_after=datetime.strptime(rec["until"],
                                                                "%Y-%m-%dT%H:%M:%SZ")))
            return True
