"""The statuses of incidents (and, from the step protocol, of steps): one source each."""

from __future__ import annotations

from enum import StrEnum

from handlers.base import STEP_DONE, StepStatus


class IncidentStatus(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    RUNNING = "running"
    CONTAINED = "contained"
    PARTIAL = "partially contained"
    FAILED = "failed"
    DENIED = "denied"
    EXPIRED = "expired"
    RELEASED = "released"
    PARTIALLY_RELEASED = "partially released"


OPEN_STATES = (IncidentStatus.PENDING, IncidentStatus.APPROVED, IncidentStatus.RUNNING)
FINAL_STATES = (IncidentStatus.CONTAINED, IncidentStatus.PARTIAL, IncidentStatus.FAILED,
                IncidentStatus.DENIED, IncidentStatus.EXPIRED, IncidentStatus.RELEASED,
                IncidentStatus.PARTIALLY_RELEASED)
RETRYABLE = (IncidentStatus.PARTIAL, IncidentStatus.FAILED,
             IncidentStatus.PARTIALLY_RELEASED)
# A containment that ran (even partly) has something to release.
RELEASABLE = (IncidentStatus.CONTAINED, IncidentStatus.PARTIAL, IncidentStatus.FAILED,
              IncidentStatus.PARTIALLY_RELEASED)

__all__ = ["FINAL_STATES", "OPEN_STATES", "RELEASABLE", "RETRYABLE", "STEP_DONE",
           "IncidentStatus", "StepStatus"]
