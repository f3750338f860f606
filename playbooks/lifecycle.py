"""An incident's lifecycle: when the finding was created (by the finding's own clock)
and first seen by Cordon, when the card was posted, decided, the first AWS change began,
the cut was verified, and the run ended — and the durations between them that a team
reports (time to decision, time to cut, time to contain).

All times are naive UTC, as the store keeps them. A finding's time comes from the
finding (GuardDuty's `createdAt`, Security Hub's `CreatedAt`, the tag event's `time`);
a request typed in Slack starts when it was made."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from playbooks.catalogue import Playbook
from playbooks.models import Incident, StepRecord
from playbooks.status import StepStatus

CHANGED = (StepStatus.SUCCEEDED, StepStatus.FAILED)
log = logging.getLogger("cordon.lifecycle")


class Observer(Protocol):
    """Told when an incident reaches an end: a run finished (contained, partly, failed,
    released), a request denied or expired. The metrics listen here."""

    def incident_ended(self, incident: Incident, steps: Sequence[StepRecord]) -> None: ...


class NoObserver:
    def incident_ended(self, incident: Incident, steps: Sequence[StepRecord]) -> None:
        return None


class Observers:
    """Several observers, each told in turn; one that fails does not stop the others."""

    def __init__(self, observers: Sequence[Observer]) -> None:
        self.observers = list(observers)

    def incident_ended(self, incident: Incident, steps: Sequence[StepRecord]) -> None:
        for observer in self.observers:
            try:
                observer.incident_ended(incident, steps)
            except Exception:
                log.exception("an incident's end could not be observed",
                              extra={"observer": type(observer).__name__})


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time from a finding (`2026-12-06T07:01:02.123Z`) as naive UTC."""
    if not value or not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return at.astimezone(UTC).replace(tzinfo=None) if at.tzinfo else at


def first_change(steps: Sequence[StepRecord]) -> datetime | None:
    """When the run's first change in AWS began: the earliest start of a step that
    changed something, or tried to (a skipped step found its work already done)."""
    starts = [s.started_at for s in steps if s.status in CHANGED and s.started_at]
    return min(starts) if starts else None


def cut_verified(playbook: Playbook, steps: Sequence[StepRecord]) -> datetime | None:
    """When the last of the playbook's cut steps was verified; None while one has not
    succeeded (a skipped cut step counts: the cut was already in place)."""
    names = set(playbook.cut_steps)
    cut = [s for s in steps if s.name in names]
    if not names or not cut or any(
            s.status not in (StepStatus.SUCCEEDED, StepStatus.SKIPPED) or s.finished_at is None
            for s in cut):
        return None
    return max(s.finished_at for s in cut if s.finished_at)


@dataclass(frozen=True)
class Lifecycle:
    started: datetime              # the finding's creation, or the request in Slack
    from_finding: bool
    finding_first_seen: datetime | None  # the activity's first sighting, by the finding
    received: datetime             # when Cordon made the incident
    card_posted: datetime | None
    decided: datetime | None
    first_change: datetime | None
    cut: datetime | None
    ended: datetime | None

    @classmethod
    def of(cls, incident: Incident, steps: Sequence[StepRecord] = (),
           playbook: Playbook | None = None) -> Lifecycle:
        """From the incident's columns; while a run is going on (or for a record made
        before those columns), what the steps say."""
        finding = (incident.facts or {}).get("finding") or {}
        created = parse_time(finding.get("created")) or parse_time(finding.get("first_seen"))
        change = incident.first_change_at or first_change(steps)
        cut = incident.cut_at or (cut_verified(playbook, steps) if playbook else None)
        return cls(
            started=min(created, incident.created_at) if created else incident.created_at,
            from_finding=created is not None,
            finding_first_seen=parse_time(finding.get("first_seen")),
            received=incident.created_at, card_posted=incident.card_posted_at,
            decided=incident.decided_at, first_change=change, cut=cut,
            ended=incident.finished_at)

    def times(self) -> dict[str, datetime | None]:
        """Every timestamp, by name (the export's `times`)."""
        return {
            "finding_created" if self.from_finding else "requested": self.started,
            "finding_first_seen": self.finding_first_seen, "received": self.received,
            "card_posted": self.card_posted, "decided": self.decided,
            "first_change": self.first_change, "cut_verified": self.cut, "ended": self.ended,
        }

    def durations(self) -> dict[str, float | None]:
        """Seconds between the stages (None where a stage has not happened):
        finding (or request) → card → decision → cut → contained, and the three figures
        a team reports."""
        start_name = "finding" if self.from_finding else "request"
        return {
            f"{start_name}_to_card": _seconds(self.started, self.card_posted),
            "card_to_decision": _seconds(self.card_posted, self.decided),
            "decision_to_cut": _seconds(self.decided, self.cut),
            "cut_to_contained": _seconds(self.cut, self.ended),
            "time_to_decision": _seconds(self.card_posted or self.received, self.decided),
            "time_to_cut": _seconds(self.decided, self.cut),
            "time_to_contain": _seconds(self.started, self.ended if self.cut else None),
        }


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def format_seconds(seconds: float | None) -> str:
    """`1.4 s`, `3 min 05 s`, `2 h 07 min`; `—` for a stage not reached."""
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def stages_line(life: Lifecycle) -> str:
    """`finding → card 4.0 s · → decision 2 min 10 s · → cut 1.3 s · → contained 12.0 s`"""
    d = life.durations()
    start = "finding" if life.from_finding else "request"
    parts = [f"{start} → card {format_seconds(d[f'{start}_to_card'])}",
             f"→ decision {format_seconds(d['card_to_decision'])}",
             f"→ cut {format_seconds(d['decision_to_cut'])}",
             f"→ contained {format_seconds(d['cut_to_contained'])}"]
    return " · ".join(parts)
