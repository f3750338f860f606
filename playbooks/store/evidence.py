"""Evidence files kept with an incident, and the snapshots still to report on."""

from __future__ import annotations

from sqlalchemy import (
    select,
    update,
)

from playbooks.models import (
    Evidence,
    Incident,
    StepRecord,
    utcnow,
)
from playbooks.status import StepStatus
from playbooks.store.base import Repository, changed_one


class EvidenceFiles(Repository):
    def evidence(self, incident_id: str) -> list[Evidence]:
        with self.session() as s:
            return list(s.scalars(select(Evidence).where(Evidence.incident_id == incident_id)
                                  .order_by(Evidence.id)))

    def evidence_by_id(self, evidence_id: int) -> Evidence | None:
        with self.session() as s:
            return s.get(Evidence, evidence_id)

    def snapshots_to_follow(self) -> list[tuple[Incident, StepRecord]]:
        with self.session() as s:
            rows = s.execute(
                select(Incident, StepRecord)
                .join(StepRecord, StepRecord.incident_id == Incident.id)
                .where(StepRecord.name == "snapshot-volumes",
                       StepRecord.status == StepStatus.SUCCEEDED,
                       Incident.snapshots_reported_at.is_(None))
            ).all()
            return [(inc, step) for inc, step in rows]

    def claim_snapshot_report(self, incident_id: str) -> bool:
        with self.session() as s:
            result = s.execute(update(Incident).where(
                Incident.id == incident_id, Incident.snapshots_reported_at.is_(None)
            ).values(snapshots_reported_at=utcnow()))
            return changed_one(result)
