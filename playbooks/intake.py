"""From alert to card: a background consumer of the findings queue. Each EventBridge
event becomes proposed containments (see playbooks.findings); each proposal one card in
the findings channel, or a note in the open card's thread for its resource.

A message is deleted once every proposal in it is stored (a card, a note, or a finding
already recorded). A malformed or unknown message is logged with its id and deleted at
once: it would fail the same way every time. A message whose handling fails for another
reason (the database or Slack did not answer) is left alone: the queue delivers it again
after its visibility timeout, and after the queue's maxReceiveCount (5 in the template)
moves it to the dead-letter queue. A delivery that comes again after a crash finds the
request already made and makes no second card."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from handlers.attribution import acting_as
from handlers.aws import Clients
from handlers.findings_queue import FindingsQueue, QueueMessage, queue_region
from handlers.retry import Backoff, describe_error
from playbooks.errors import CordonError
from playbooks.findings import Malformed, Proposal, closed_reason, parse_event
from playbooks.models import Incident, Message
from playbooks.service import Cordon

log = logging.getLogger("cordon.intake")

UNIT = "findings-intake"
ERROR_BACKOFF = Backoff(attempts=8, base=1.0, cap=60.0)


class Intake:
    def __init__(self, cordon: Cordon, clients_for: Callable[..., Clients], queue_url: str,
                 channel: str, min_severity: float, post_card: Callable[[Incident], None],
                 note: Callable[[Incident, Proposal, bool], Message],
                 say: Callable[[Proposal, CordonError], None], lookback_days: int = 7,
                 wake: Callable[[str], None] = lambda _incident_id: None,
                 products: tuple[str, ...] = ("GuardDuty",)) -> None:
        self.cordon = cordon
        self.queue = FindingsQueue(clients_for(queue_region(queue_url, cordon.regions[0])),
                                   queue_url)
        self.channel = channel
        self.min_severity = min_severity
        self.post_card, self.note, self.say = post_card, note, say
        self.lookback_days = lookback_days
        self.products = products  # Security Hub findings from these products only
        self.wake = wake  # sends what was queued for a thread
        # True while received messages are handled: a stop waits for that, never for a
        # long poll (see IntakeThread.stop).
        self.handling = False
        # The age of the oldest message the last poll received (the intake's lag).
        self.lag_seconds = 0.0

    def poll(self, wait_seconds: int = 20, stop: threading.Event | None = None) -> int:
        """One long poll; returns how many messages were handled and deleted. Messages
        received once `stop` is set are left alone: the queue delivers them again after
        its visibility timeout, to this replica's next life or another replica."""
        with acting_as(UNIT):
            messages = self.queue.receive(wait_seconds)
        now = time.time()
        self.lag_seconds = max((now - m.sent_at for m in messages if m.sent_at), default=0.0)
        done = 0
        self.handling = True
        try:
            if stop is not None and stop.is_set():
                return 0
            for message in messages:
                if self.handle(message):
                    with acting_as(UNIT):
                        self.queue.delete(message)
                    done += 1
        finally:
            self.handling = False
        return done

    def handle(self, message: QueueMessage) -> bool:
        """Whether the message is done with (and may be deleted)."""
        where = {"message_id": message.message_id, "receive_count": message.receive_count}
        try:
            proposals = parse_event(message.body)
        except Malformed as exc:
            log.warning("finding message dropped: not an event Cordon understands",
                        extra={**where, "why": str(exc)[:300]})
            return True
        if not proposals:
            log.info("finding names nothing Cordon contains", extra=where)
        for p in proposals:
            about = {**where, "source": p.source, "finding": p.finding_id,
                     "target": p.resource_id, "severity": p.severity}
            if p.severity is not None and p.severity < self.min_severity:
                log.info("finding below the minimum severity: dropped", extra=about)
                continue
            closed = closed_reason(p, self.products)
            if closed:
                log.info("finding dropped", extra={**about, "why": closed})
                continue
            try:
                outcome, incident = self.cordon.propose(p, self.channel, self.post_card,
                                                        self.note, self.lookback_days)
            except CordonError as exc:
                log.warning("finding not proposed", extra={**about, "why": str(exc)[:300]})
                self.say(p, exc)
                continue
            except Exception as exc:
                log.exception("finding not handled; the queue will deliver it again",
                              extra={**about, "error": describe_error(exc).code})
                return False
            log.info("finding proposed" if outcome == "card" else
                     "finding decided before, its severity not risen: no card"
                     if outcome == "decided" else "finding joined an incident",
                     extra={**about, "outcome": outcome, "incident": incident.id})
            if outcome == "noted":
                self.wake(incident.fleet_id or incident.id)  # a member notes in its fleet
        return True

    def run(self, stop: threading.Event, wait_seconds: int = 20) -> None:
        """Poll until `stop`; a failing poll (SQS unreachable, throttled) backs off."""
        failures = 0
        while not stop.is_set():
            try:
                handled = self.poll(wait_seconds, stop)
                failures = 0
                if wait_seconds == 0 and not handled:
                    # Short polling (a test's bot, which must stop at once): a pause a
                    # stop interrupts stands in for the long poll's wait.
                    stop.wait(0.2)
            except Exception as exc:
                failures += 1
                delay = ERROR_BACKOFF.delays()[min(failures, ERROR_BACKOFF.attempts - 2)]
                log.warning("findings queue not read; trying again",
                            extra={"error": describe_error(exc).code, "in_seconds": delay})
                stop.wait(max(delay, 1.0))
