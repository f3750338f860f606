"""The watch after a cut: for CORDON_WATCH_MINUTES after a key, user, role or instance
was contained, CloudTrail is looked up (paced; every configured region plus us-east-1)
for activity by what was cut — the key, the user, the role (its AssumeRole calls), the
instance's role session — since the cut. What is found goes into the incident's thread,
grouped, at most one message per check (one check a minute); at the end, "quiet" or a
summary. This is the credential-compromise playbook's "is it still being used?", asked
by Cordon instead of a responder.

A check reads from the cut each time and reports only events it has not reported
(CloudTrail delivers events minutes late). A region that cannot be read is said once,
with AWS's error code, and read again at the next check. A released containment's watch
ends at its next check. A fleet's members are not watched one by one."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from handlers import cloudtrail
from handlers.attribution import acting_as
from handlers.aws import Clients
from handlers.cloudtrail import TrailEvent as TrailEvent
from handlers.retry import describe_error
from playbooks.logctx import incident_context
from playbooks.models import THREAD, Incident, Message, StepRecord, Watch, utcnow
from playbooks.status import IncidentStatus
from playbooks.store import Store

log = logging.getLogger("cordon.watch")

WATCHED = ("key", "user", "role", "instance")
SEEN_KEPT = 2000  # event ids remembered per watch (older ones are long reported)
# A check is due this much before a full interval has passed: the scheduler runs the
# sweep every interval, give or take milliseconds, and a check due a millisecond after
# the sweep would wait a whole second interval.
CHECK_SLACK = timedelta(seconds=2)


class WatchVoice(Protocol):
    """What the watch says in the thread (the Slack side renders it)."""

    def found(self, incident: Incident, events: Sequence[TrailEvent], total: int) -> str: ...

    def trouble(self, incident: Incident, errors: dict[str, str]) -> str: ...

    def ended(self, incident: Incident, total: int, minutes: int, released: bool) -> str: ...


class Watcher:
    def __init__(self, store: Store, clients_for: Callable[..., Clients], regions: Sequence[str],
                 minutes: int, voice: WatchVoice, interval_seconds: float = 60,
                 wake: Callable[[str], None] = lambda _incident_id: None,
                 on_events: Callable[[Incident, int], None] | None = None) -> None:
        self.store = store
        self.clients_for = clients_for
        self.regions = list(dict.fromkeys([*regions, cloudtrail.GLOBAL_REGION]))
        self.minutes = minutes
        self.voice = voice
        self.interval = timedelta(seconds=interval_seconds)
        self.wake = wake
        self.on_events = on_events
        self.reader = cloudtrail.TrailReader()

    # Observer: a run that cut its target starts a watch -------------------------------

    def incident_ended(self, incident: Incident, steps: Sequence[StepRecord]) -> None:
        if (self.minutes <= 0 or incident.kind not in WATCHED or incident.fleet_id
                or incident.cut_at is None or incident.status not in (
                    IncidentStatus.CONTAINED, IncidentStatus.PARTIAL)):
            return
        subjects = cloudtrail.subjects(incident.kind, incident.facts or {}, incident.target_id)
        if subjects and self.store.start_watch(incident.id, subjects, self.regions,
                                               incident.cut_at, self.minutes):
            log.info("watch started", extra={"incident": incident.id,
                                             "minutes": self.minutes})

    # the sweep -----------------------------------------------------------------------

    def sweep(self, now: datetime | None = None) -> int:
        """Check every watch that is due; how many were checked. First, start the watch
        of a containment whose process died between its run's end and its watch."""
        now = now or utcnow()  # one clock for the whole sweep (see CHECK_SLACK)
        if self.minutes > 0:
            for missed in self.store.unwatched_cuts(
                    WATCHED, (IncidentStatus.CONTAINED, IncidentStatus.PARTIAL),
                    now - timedelta(minutes=self.minutes)):
                self.incident_ended(missed, [])
        checked = 0
        for watch in self.store.claim_due_watches(now):
            with incident_context(watch.incident_id):
                try:
                    self.check(watch, now)
                    checked += 1
                except Exception:
                    log.exception("watch check failed; it runs again at the next sweep")
        return checked

    def check(self, watch: Watch, now: datetime | None = None) -> None:
        incident = self.store.get(watch.incident_id)
        if incident is None:
            return
        now = now or utcnow()
        released = incident.status in (IncidentStatus.RELEASED,
                                       IncidentStatus.PARTIALLY_RELEASED)
        finished = released or now >= watch.until
        found: list[TrailEvent] = []
        errors: dict[str, str] = {}
        if not released:
            found, errors = self._look(incident, watch)
        seen = set(watch.seen or [])
        new = sorted({e.event_id: e for e in found if e.event_id not in seen}.values(),
                     key=lambda e: e.at)
        # One message a check at most (a check a minute): what was found, what could not
        # be read, and the end.
        parts: list[str] = []
        if new:
            parts.append(self.voice.found(incident, new, (watch.events or 0) + len(new)))
        if errors and errors != (watch.errors or {}):
            parts.append(self.voice.trouble(incident, errors))
        if finished:
            parts.append(self.voice.ended(incident, (watch.events or 0) + len(new),
                                          self.minutes, released))
        messages: list[Message] = [(THREAD, {"text": "\n\n".join(parts)})] if parts else []
        kept = [*(watch.seen or []), *(e.event_id for e in new)][-SEEN_KEPT:]
        if self.store.watch_checked(watch, seen=kept, found=len(new), errors=errors,
                                    next_check_at=now + self.interval - CHECK_SLACK,
                                    finished=finished,
                                    messages=messages):
            if new and self.on_events is not None:
                self.on_events(incident, len(new))
            if messages:
                self.wake(incident.id)
            log.info("watch checked", extra={"new_events": len(new), "finished": finished,
                                             "errors": errors})

    def _look(self, incident: Incident, watch: Watch
              ) -> tuple[list[TrailEvent], dict[str, str]]:
        clients = self.clients_for(incident.region,
                                   (incident.facts or {}).get("account_name"))
        since = watch.since.replace(tzinfo=UTC)
        found: list[TrailEvent] = []
        errors: dict[str, str] = {}
        for region in watch.regions:
            for subject in watch.subjects:
                try:
                    with acting_as(cloudtrail.UNIT):
                        events, why = self.reader.events(
                            clients, region, subject["attribute"], subject["value"], since)
                except Exception as exc:
                    errors[region] = describe_error(exc).code
                    continue
                found += events
                if why:
                    errors[region] = why
        return found, errors


def group(events: Sequence[TrailEvent]) -> list[dict[str, Any]]:
    """Events grouped by what was called, from where, with what outcome: the lines of a
    watch message, the largest group first."""
    groups: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for e in events:
        key = (e.source, e.name, e.source_ip, e.error_code)
        g = groups.setdefault(key, {"source": e.source, "name": e.name, "ip": e.source_ip,
                                    "error": e.error_code, "count": 0, "first": e.at,
                                    "last": e.at, "regions": set(), "agent": e.user_agent})
        g["count"] += 1
        g["first"], g["last"] = min(g["first"], e.at), max(g["last"], e.at)
        g["regions"].add(e.region)
    return sorted(groups.values(), key=lambda g: (-g["count"], g["first"]))
