"""Scheduled work is one idempotent sweep over the database that any replica may run:
expire undecided requests, resume interrupted runs, resend what Slack missed, remind
the channel of an automatic containment nobody reviewed; and the CloudTrail watch's
checks, on their own interval."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from bot import blocks
from playbooks.logctx import incident_context
from playbooks.models import THREAD

if TYPE_CHECKING:
    from bot.deps import Deps

log = logging.getLogger("cordon.sweep")


def sweep(deps: Deps) -> dict[str, int]:
    expired = deps.cordon.expire_due(messages=[(THREAD, {
        "text": "⌛ Nobody decided before the deadline; the request expired and nothing "
                "was changed."})])
    for incident in expired:
        with incident_context(incident.id):
            log.info("request expired")
            deps.timeline.wake(incident.id)
    for incident, states in deps.cordon.snapshot_reports():
        with incident_context(incident.id):
            log.info("snapshots finished", extra={"snapshots": states})
            deps.timeline.post(incident, blocks.render_snapshot_report(states))
    for incident, note in deps.cordon.expire_revocations():
        with incident_context(incident.id):
            log.info("revocation removed", extra={"note": note})
            deps.timeline.post(incident, "🧹 Every credential issued before the containment "
                               f"has now expired: {note}.")
    if deps.auto_remind_seconds:
        for incident_id in deps.store.remind_unreviewed(
                deps.auto_remind_seconds,
                lambda incident: (THREAD, {"text": blocks.render_auto_reminder(incident),
                                           "broadcast": True})):
            with incident_context(incident_id):
                log.warning("automatic containment not reviewed: channel reminded")
                deps.timeline.wake(incident_id)
    resumed = take_over(deps)
    sent = deps.timeline.flush()
    return {"expired": len(expired), "resumed": len(resumed), "resent": sent}


def take_over(deps: Deps) -> list[str]:
    """Runs whose worker died: taken over as soon as their lease lapses (a quarter of a
    lease apart), so that a containment never waits long for a dead replica."""
    resumed = deps.worker.resume_interrupted()
    for incident_id in resumed:
        with incident_context(incident_id):
            log.info("resuming interrupted run")
    return resumed


def watch(deps: Deps) -> int:
    """The CloudTrail watch's checks that are due (see playbooks.watch)."""
    return deps.watcher.sweep() if deps.watcher is not None else 0


def start_scheduler(deps: Deps, interval_seconds: int, takeover_seconds: float = 2.5,
                    watch_seconds: float = 60) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(watch, "interval", args=[deps], seconds=watch_seconds, id="watch",
                      max_instances=1, coalesce=True)
    scheduler.add_job(sweep, "interval", args=[deps], seconds=interval_seconds, id="sweep",
                      max_instances=1, coalesce=True)
    scheduler.add_job(take_over, "interval", args=[deps], seconds=takeover_seconds,
                      id="takeover", max_instances=1, coalesce=True)
    scheduler.start()
    return scheduler

