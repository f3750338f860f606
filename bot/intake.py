"""The Slack side of the alert intake: a proposed card goes to the findings channel, a
repeated finding becomes a note in the open card's thread, what cannot be proposed is
said in the channel. The consumer itself is playbooks.intake."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from bot import blocks
from bot.settings import Settings
from playbooks.errors import CordonError
from playbooks.findings import Proposal
from playbooks.intake import Intake
from playbooks.models import THREAD, Incident, Message

if TYPE_CHECKING:
    from bot.deps import Deps

log = logging.getLogger("cordon.intake")


def build_intake(settings: Settings, deps: Deps) -> Intake | None:
    if not settings.findings_queue_url:
        return None
    from bot.flows import post_card

    def card(incident: Incident) -> None:
        post_card(deps, incident, deps.client)

    def note(incident: Incident, p: Proposal, again: bool) -> Message:
        # Keyed by the finding: a later count of it updates this note in place.
        own = (incident.facts or {}).get("finding", {}).get("finding_id") == p.finding_id
        payload = {"text": blocks.render_finding_note(p, own), "finding_note": p.finding_id,
                   "update": again or own}
        if incident.fleet_id:
            payload["for_incident"] = incident.fleet_id  # a member's note: its fleet's thread
        return (THREAD, payload)

    def say(p: Proposal, error: CordonError) -> None:
        deps.client.chat_postMessage(channel=settings.findings_channel,
                                     text=blocks.render_not_proposed(p, error),
                                     unfurl_links=False)

    intake = Intake(deps.cordon, deps.cordon.clients_for, settings.findings_queue_url,
                    settings.findings_channel, settings.findings_min_severity, card, note, say,
                    settings.key_lookback_days, wake=deps.timeline.wake,
                    products=tuple(settings.findings_products))
    if deps.metrics is not None:
        deps.metrics.gauges.intake_lag = lambda: intake.lag_seconds
    return intake


class IntakeThread:
    """The consumer in the background of `serve`; with several replicas, the queue's
    visibility timeout gives each message to one of them."""

    def __init__(self, intake: Intake, wait_seconds: int = 20) -> None:
        self.intake = intake
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=intake.run, args=(self.stop_event, wait_seconds),
                                       name="cordon-intake", daemon=True)

    def start(self) -> IntakeThread:
        self.thread.start()
        log.info("findings intake on", extra={"queue": self.intake.queue.url})
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop at once when the consumer is in a long poll (up to 20 s of waiting on
        SQS): the messages that poll returns are left for the queue to deliver again. A
        message being handled is finished first."""
        self.stop_event.set()
        deadline = time.monotonic() + timeout
        while self.thread.is_alive() and time.monotonic() < deadline:
            # `handling` is set before the consumer looks at the stop event: read after
            # the event was set, False means it will handle nothing more.
            if not self.intake.handling:
                return
            self.thread.join(timeout=0.05)
