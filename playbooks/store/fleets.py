"""Fleets: one card, many instances. Each member is an incident of its own (status,
release, retry and export work per instance) that names its fleet; the fleet's decision
is handed to its members, and the fleet ends when its last member has."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import select, update

from playbooks.models import Decision, Incident, Message, utcnow
from playbooks.status import OPEN_STATES
from playbooks.store.base import APPROVED, DENIED, PENDING, RUNNING, Repository, changed_one


class Fleets(Repository):
    def members(self, fleet_id: str) -> list[Incident]:
        with self.session() as s:
            return list(s.scalars(select(Incident).where(Incident.fleet_id == fleet_id)
                                  .order_by(Incident.created_at, Incident.id)))

    def running_fleets(self) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(Incident.id).where(Incident.kind == "fleet",
                                                            Incident.status == RUNNING)))

    def hand_decision_to_members(self, fleet_id: str, approve: bool) -> list[str]:
        """The fleet's decision, made once on its card, becomes each pending member's
        (the same person, the same time). Returns the members it approved or denied now;
        a second call finds none left to change."""
        with self.session() as s:
            fleet = s.get(Incident, fleet_id)
            if fleet is None or fleet.decided_by is None:
                return []
            ids = list(s.scalars(select(Incident.id).where(
                Incident.fleet_id == fleet_id, Incident.status == PENDING)))
            if not ids:
                return []
            s.execute(update(Incident).where(Incident.id.in_(ids),
                                             Incident.status == PENDING)
                      .values(status=APPROVED if approve else DENIED,
                              decided_by=fleet.decided_by,
                              decided_at=fleet.decided_at or utcnow()))
            for member in ids:
                s.add(Decision(incident_id=member, user_id=fleet.decided_by,
                               action="approve" if approve else "deny",
                               outcome=f"accepted on fleet {fleet_id}", at=utcnow()))
            return ids

    def start_fleet(self, fleet_id: str) -> bool:
        """approved → running, once: its members run on their own from here."""
        with self.session() as s:
            result = s.execute(update(Incident).where(
                Incident.id == fleet_id, Incident.status == APPROVED
            ).values(status=RUNNING, started_at=utcnow(), lease_owner=None, lease_until=None))
            return changed_one(result)

    def settle_fleet(self, fleet_id: str,
                     outcome: Callable[[list[Incident]], tuple[str, str, Sequence[Message]]]
                     ) -> bool:
        """Once no member is open any more: the fleet's final status, summary and messages
        (from `outcome(members)`), written once whichever member ended last."""
        members = self.members(fleet_id)
        if not members or any(m.status in OPEN_STATES for m in members):
            return False
        status, summary, messages = outcome(members)
        with self.session() as s:
            result = s.execute(update(Incident).where(
                Incident.id == fleet_id, Incident.status == RUNNING
            ).values(status=status, summary=summary, finished_at=utcnow()))
            won = changed_one(result)
            if won:
                self._add_messages(s, fleet_id, messages)
            return won

    @staticmethod
    def fleet_counts(members: list[Incident]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for m in members:
            counts[m.status] = counts.get(m.status, 0) + 1
        return counts

