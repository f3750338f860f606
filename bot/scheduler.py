"""Scheduled work is one idempotent sweep over the database that any replica may run:
expire undecided requests, resume interrupted runs, resend what Slack missed."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from bot import blocks
from playbooks.logctx import incident_context

if TYPE_CHECKING:
    from bot.wiring import Deps

log = logging.getLogger("cordon.sweep")


def sweep(deps: Deps) -> dict[str, int]:
    expired = deps.cordon.expire_due()
    for incident in expired:
        with incident_context(incident.id):
            log.info("request expired")
            deps.timeline.post(incident, "⌛ Nobody decided before the deadline; the request "
                               "expired and nothing was changed.")
            deps.timeline.update_card(incident)
    for incident, states in deps.cordon.snapshot_reports():
        with incident_context(incident.id):
            log.info("snapshots finished", extra={"snapshots": states})
            deps.timeline.post(incident, blocks.render_snapshot_report(states))
    resumed = deps.worker.resume_interrupted()
    for incident_id in resumed:
        with incident_context(incident_id):
            log.info("resuming interrupted run")
    sent = deps.timeline.flush()
    return {"expired": len(expired), "resumed": len(resumed), "resent": sent}


def start_scheduler(deps: Deps, interval_seconds: int) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(sweep, "interval", args=[deps], seconds=interval_seconds, id="sweep",
                      max_instances=1, coalesce=True)
    scheduler.start()
    return scheduler

