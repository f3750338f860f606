"""Runs a playbook's steps in order, recording each: check → capture → save → apply →
verify. Resumes an interrupted run from the store: finished steps are skipped and the
prior state captured before the interruption is kept."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from handlers.aws import Clients, describe_error
from handlers.base import StepContext, StepFailed, Target, get_action
from playbooks.catalogue import Playbook, get_playbook
from playbooks.logctx import incident_context
from playbooks.store import CONTAINED, FAILED, PARTIAL, Incident, StepRecord, Store, utcnow

log = logging.getLogger("cordon.runner")

DONE = ("succeeded", "skipped")


class Timeline(Protocol):
    """Where a run reports; the Slack side implements it."""

    def run_started(self, incident: Incident, resumed: bool) -> None: ...

    def step_finished(self, incident: Incident, step: StepRecord) -> None: ...

    def run_finished(self, incident: Incident) -> None: ...


def target_of(incident: Incident) -> Target:
    return Target(
        kind=incident.kind,
        resource_id=incident.target_id,
        region=incident.region,
        account=incident.account or None,
        incident_id=incident.id,
        facts=incident.facts or {},
        requester=incident.requester,
        approver=incident.decided_by or "",
        reason=incident.reason,
    )


def final_status(playbook: Playbook, steps: list[StepRecord]) -> str:
    by_name = {s.name: s for s in steps}
    critical_failed = any(
        by_name[st.action].status == "failed" for st in playbook.steps if st.critical
    )
    if critical_failed:
        return FAILED
    if all(s.status in DONE for s in steps):
        return CONTAINED
    return PARTIAL


def summarise(status: str, steps: list[StepRecord]) -> str:
    ok = sum(1 for s in steps if s.status in DONE)
    failed = [s for s in steps if s.status == "failed"]
    line = f"{ok} of {len(steps)} steps done"
    if failed:
        line += "; failed: " + ", ".join(f"{s.name} ({s.error_code})" for s in failed)
    not_run = [s.name for s in steps if s.status == "not-run"]
    if not_run:
        line += "; not run: " + ", ".join(not_run)
    return line


class Runner:
    def __init__(
        self,
        store: Store,
        clients_for: Callable[[str], Clients],
        timeline: Timeline,
        lease_seconds: int = 60,
    ) -> None:
        self.store = store
        self.clients_for = clients_for
        self.timeline = timeline
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"

    def run(self, incident_id: str) -> str | None:
        """Run (or resume) one incident's playbook. None when another worker has it."""
        with incident_context(incident_id):
            before = self.store.get(incident_id)
            if before is None or not self.store.claim_run(incident_id, self.owner,
                                                          self.lease_seconds):
                return None
            resumed = before.status == "running"
            log.info("run claimed", extra={"owner": self.owner, "resumed": resumed})
            stop = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(incident_id, stop),
                                    daemon=True)
            beat.start()
            try:
                return self._run(incident_id, resumed)
            finally:
                stop.set()
                beat.join()

    def _heartbeat(self, incident_id: str, stop: threading.Event) -> None:
        with incident_context(incident_id):
            while not stop.wait(self.lease_seconds / 4):
                if not self.store.renew_lease(incident_id, self.owner, self.lease_seconds):
                    log.warning("lease lost")
                    return

    def _run(self, incident_id: str, resumed: bool) -> str:
        incident = self.store.get(incident_id)
        assert incident is not None
        playbook = get_playbook(incident.playbook)
        if playbook is None:
            raise ValueError(f"unknown playbook {incident.playbook}")
        records = self.store.ensure_steps(incident_id, playbook.step_names)
        self._notify(self.timeline.run_started, incident, resumed)
        target = target_of(incident)
        clients = self.clients_for(incident.region)
        stopped_by: str | None = None
        for step, record in zip(playbook.steps, records, strict=True):
            if record.status in DONE:
                continue
            if stopped_by is not None:
                self.store.update_step(record.id, status="not-run",
                                       summary=f"not run: {stopped_by} failed")
                continue
            ok = self._run_step(StepContext(target=target, clients=clients), record, incident)
            if not ok and step.critical:
                stopped_by = record.name
        steps = self.store.steps(incident_id)
        status = final_status(playbook, steps)
        self.store.finish_run(incident_id, self.owner, status, summarise(status, steps))
        finished = self.store.get(incident_id)
        assert finished is not None
        log.info("run finished", extra={"status": status})
        self._notify(self.timeline.run_finished, finished)
        return status

    def _run_step(self, ctx: StepContext, record: StepRecord, incident: Incident) -> bool:
        action = get_action(record.name)
        started = time.monotonic()
        self.store.update_step(record.id, status="running", started_at=utcnow(),
                               attempts=record.attempts + 1, error_code=None,
                               error_message=None)
        values: dict[str, Any]
        try:
            captured = record.captured
            if action.check(ctx):
                values = {"status": "skipped" if captured is None else "succeeded",
                          "summary": "already in place; nothing to change"}
            else:
                if captured is None:
                    captured = action.capture(ctx)
                    # The prior state is safe in the store before anything changes.
                    self.store.update_step(record.id, captured=captured)
                outcome = action.apply(ctx, captured)
                seen = action.verify(ctx, captured, outcome)
                values = {"status": "succeeded", "summary": outcome.summary,
                          "details": {**outcome.details, "verified": seen}}
        except StepFailed as exc:
            values = {"status": "failed", "error_code": exc.code,
                      "error_message": exc.message, "summary": exc.done}
        except Exception as exc:
            err = describe_error(exc)
            log.exception("step raised", extra={"step": record.name})
            values = {"status": "failed", "error_code": err.code, "error_message": err.message}
        values["finished_at"] = utcnow()
        values["duration_ms"] = int((time.monotonic() - started) * 1000)
        self.store.update_step(record.id, **values)
        log.info("step finished", extra={"step": record.name, "status": values["status"],
                                         "duration_ms": values["duration_ms"],
                                         "error_code": values.get("error_code")})
        fresh = next(s for s in self.store.steps(incident.id) if s.id == record.id)
        self._notify(self.timeline.step_finished, incident, fresh)
        return values["status"] in DONE

    def _notify(self, fn: Callable[..., None], *args: Any) -> None:
        # Slack being down must never stop a containment: the outbox retries later.
        try:
            fn(*args)
        except Exception:
            log.exception("timeline update failed; left in the outbox")


class Worker:
    """Runs incidents on a small thread pool, off Slack's 3-second path."""

    def __init__(self, runner: Runner, max_workers: int = 4) -> None:
        self.runner = runner
        self._pool = ThreadPoolExecutor(max_workers=max_workers,
                                        thread_name_prefix="cordon-run")
        self._lock = threading.Lock()
        self._active: set[str] = set()

    def submit(self, incident_id: str) -> Future[str | None] | None:
        with self._lock:
            if incident_id in self._active:
                return None
            self._active.add(incident_id)
        return self._pool.submit(self._run, incident_id)

    def _run(self, incident_id: str) -> str | None:
        try:
            return self.runner.run(incident_id)
        except Exception:
            with incident_context(incident_id):
                log.exception("run crashed")
            raise
        finally:
            with self._lock:
                self._active.discard(incident_id)

    def resume_interrupted(self) -> list[str]:
        ids = self.runner.store.runs_to_resume()
        for incident_id in ids:
            self.submit(incident_id)
        return ids

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
