"""The watch after a cut: made once per containment, claimed by one replica at a time
for each check, its messages written in the transaction that records what it found."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from playbooks.models import Incident, Message, Watch, utcnow
from playbooks.store.base import Repository, changed_one

CLAIM_SECONDS = 120  # a check that takes longer is taken over by another replica


class Watches(Repository):
    def start_watch(self, incident_id: str, subjects: list[dict[str, str]], regions: list[str],
                    since: datetime, minutes: int) -> bool:
        """A watch for the incident, once (False: it had one — two replicas ending the
        same run's observers race on the primary key, and one insert wins)."""
        try:
            with self.session() as s:
                if s.get(Watch, incident_id) is not None:
                    return False
                s.add(Watch(incident_id=incident_id, subjects=subjects, regions=regions,
                            since=since, until=since + timedelta(minutes=minutes),
                            next_check_at=since, seen=[], events=0, errors={}))
        except IntegrityError:
            return False
        return True

    def watch(self, incident_id: str) -> Watch | None:
        with self.session() as s:
            return s.get(Watch, incident_id)

    def claim_due_watches(self, now: datetime | None = None, limit: int = 20) -> list[Watch]:
        """Watches due for a check, each claimed by this caller (a conditional update:
        two replicas never check one watch at once)."""
        now = now or utcnow()
        with self.session() as s:
            due = list(s.scalars(select(Watch.incident_id).where(
                Watch.finished_at.is_(None), Watch.next_check_at <= now,
                or_(Watch.claimed_until.is_(None), Watch.claimed_until < now))
                .order_by(Watch.next_check_at).limit(limit)))
        claimed = []
        for incident_id in due:
            with self.session() as s:
                # Due still: another claimer may have checked it since it was read.
                result = s.execute(update(Watch).where(
                    Watch.incident_id == incident_id, Watch.finished_at.is_(None),
                    Watch.next_check_at <= now,
                    or_(Watch.claimed_until.is_(None), Watch.claimed_until < now))
                    .values(claimed_until=now + timedelta(seconds=CLAIM_SECONDS)))
                if changed_one(result):
                    row = s.get(Watch, incident_id)
                    if row is not None:
                        claimed.append(row)
        return claimed

    def watch_checked(self, watch: Watch, *, seen: list[str], found: int,
                      errors: dict[str, Any], next_check_at: datetime, finished: bool,
                      messages: Sequence[Message]) -> bool:
        """Record a check and queue what it says, in one transaction — only while the
        claim it was made under still holds."""
        with self.session() as s:
            result = s.execute(update(Watch).where(
                Watch.incident_id == watch.incident_id,
                Watch.claimed_until == watch.claimed_until, Watch.finished_at.is_(None))
                .values(seen=seen, events=Watch.events + found, errors=errors,
                        next_check_at=next_check_at, claimed_until=None,
                        finished_at=utcnow() if finished else None))
            if not changed_one(result):
                return False
            self._add_messages(s, watch.incident_id, messages)
            return True

    def unwatched_cuts(self, kinds: Sequence[str], statuses: Sequence[str], since: datetime
                       ) -> list[Incident]:
        """Containments whose cut was verified after `since` and that have no watch: a
        process that died between a run's end and the start of its watch."""
        with self.session() as s:
            return list(s.scalars(select(Incident).outerjoin(
                Watch, Watch.incident_id == Incident.id).where(
                Watch.incident_id.is_(None), Incident.cut_at >= since,
                Incident.kind.in_(kinds), Incident.status.in_(statuses),
                Incident.fleet_id.is_(None))))
