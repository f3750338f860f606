"""Revocation statements Cordon added to a principal, kept until every credential they
cover has expired."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    select,
    update,
)

from playbooks.models import (
    Revocation,
    utcnow,
)
from playbooks.store.base import Repository, changed_one


class Revocations(Repository):
    def revocations(self, incident_id: str) -> list[Revocation]:
        with self.session() as s:
            return list(s.scalars(select(Revocation).where(Revocation.incident_id == incident_id)
                                  .order_by(Revocation.id)))

    def revocations_due(self, now: datetime | None = None) -> list[Revocation]:
        with self.session() as s:
            return list(s.scalars(select(Revocation).where(
                Revocation.removed_at.is_(None), Revocation.remove_after <= (now or utcnow()))
                .order_by(Revocation.remove_after)))

    def claim_revocation(self, revocation_id: int, note: str) -> bool:
        """Recorded as removed once, whichever replica's sweep removed it."""
        with self.session() as s:
            result = s.execute(update(Revocation).where(
                Revocation.id == revocation_id, Revocation.removed_at.is_(None)
            ).values(removed_at=utcnow(), note=note[:1000]))
            return changed_one(result)
