"""Runs a playbook: phase after phase, the steps of a phase concurrently, each step
check → capture → save → apply → verify, every outcome recorded with its timing.
Resumes an interrupted run from the store: finished steps are skipped and the prior
state captured before the interruption is kept."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NoReturn, Protocol

from handlers.attribution import acting_as
from handlers.aws import Clients
from handlers.base import (
    GATE_PENDING,
    STEP_DONE,
    Action,
    Outcome,
    StepContext,
    StepFailed,
    StepHeld,
    StepStatus,
    Target,
)
from handlers.fanout import parallel
from handlers.lease import LeaseLost, RunGuard, run_guard
from handlers.pacing import CUT_UNITS
from handlers.registry import get_action
from handlers.retry import describe_error
from playbooks.catalogue import (
    RELEASE,
    Playbook,
    Step,
    applied_change,
    get_playbook,
    release_playbook,
)
from playbooks.lifecycle import NoObserver, Observer, cut_verified, first_change
from playbooks.logctx import incident_context
from playbooks.models import Incident, Message, StepRecord, utcnow
from playbooks.store import (
    APPROVED,
    CONTAINED,
    FAILED,
    PARTIAL,
    PARTIALLY_RELEASED,
    RELEASABLE,
    RELEASED,
    RUNNING,
    Store,
)

log = logging.getLogger("cordon.runner")

DONE = STEP_DONE
FLEET_THREADS = 256  # members running at once (a fleet card holds at most 200)


class Timeline(Protocol):
    """What a run says in its thread; the Slack side implements it. Each method returns
    the messages (kind, payload) that the runner writes in the same transaction as the
    change they report; `wake` then sends them."""

    def run_started(self, incident: Incident, resumed: bool) -> list[Message]: ...

    def step_finished(self, incident: Incident, step: StepRecord) -> list[Message]: ...

    def run_finished(self, incident: Incident) -> list[Message]: ...

    def note(self, incident: Incident, text: str) -> list[Message]: ...

    def fleet_started(self, fleet: Incident, members: list[Incident]) -> list[Message]: ...

    def fleet_finished(self, fleet: Incident, members: list[Incident]) -> list[Message]: ...

    def wake(self, incident_id: str) -> None: ...


# Who runs: this host (or CORDON_WORKER_ID, where host names are not unique), this
# process, this start of it. A process that starts again (same host, and the same pid
# in a container) recognises the runs of its earlier life.
BOOT = uuid.uuid4().hex[:8]


def worker_host() -> str:
    return (os.environ.get("CORDON_WORKER_ID") or socket.gethostname()).replace(":", "-")[:32]


def process_owner() -> str:
    return f"{worker_host()}:{os.getpid()}:{BOOT}"


def owner_is_dead(owner: str) -> bool:
    """An owner recorded by an earlier life of a process on this host, now gone."""
    parts = owner.split(":")
    if len(parts) < 3 or parts[0] != worker_host() or not parts[1].isdigit():
        return False
    pid, boot = int(parts[1]), parts[2]
    if boot == BOOT:
        return False  # this very process
    if pid == os.getpid():
        return True  # a container restarted: same pid, another start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def target_of(incident: Incident, approver: str | None = None,
              extra_facts: dict[str, Any] | None = None) -> Target:
    return Target(
        kind=incident.kind,
        resource_id=incident.target_id,
        region=incident.region,
        account=incident.account or None,
        incident_id=incident.id,
        facts={**(incident.facts or {}), **(extra_facts or {})},
        requester=incident.requester,
        approver=approver or incident.decided_by or "",
        reason=incident.reason,
    )


# A critical step that failed with these made its change (the ENIs are sealed) without
# all of what it claims being confirmed: the incident is partially contained, not failed.
CUT_BUT_UNCONFIRMED = frozenset({"NotConverted"})


def final_status(incident: Incident, playbook: Playbook, steps: list[StepRecord]) -> str:
    by_name = {s.name: s for s in steps}
    failed = any(s.status not in STEP_DONE for s in steps)
    if incident.kind == "release":
        return PARTIALLY_RELEASED if failed else RELEASED
    if any(by_name[st.name].status == StepStatus.FAILED
           and by_name[st.name].error_code not in CUT_BUT_UNCONFIRMED
           for st in playbook.steps if st.critical):
        return FAILED
    return PARTIAL if failed else CONTAINED


def summarise(steps: list[StepRecord]) -> str:
    ok = sum(1 for s in steps if s.status in DONE)
    line = f"{ok} of {len(steps)} steps done"
    failed = [s for s in steps if s.status == StepStatus.FAILED]
    if failed:
        line += "; failed: " + ", ".join(f"{s.name} ({s.error_code})" for s in failed)
    not_run = [s.name for s in steps if s.status == StepStatus.NOT_RUN]
    if not_run:
        line += "; not run: " + ", ".join(not_run)
    return line


def history_of(steps: list[StepRecord]) -> dict[str, dict[str, Any]]:
    return {s.name: {"status": s.status, "summary": s.summary, "details": s.details,
                     "captured": s.captured, "error_code": s.error_code} for s in steps}


@dataclass
class _Pending:
    """A step between its change and its verify."""

    step: Step
    record: StepRecord
    ctx: StepContext
    action: Action
    started: float
    values: dict[str, Any] = field(default_factory=dict)
    outcome: Outcome | None = None
    captured: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.values.get("status") in DONE


def _unfinished(names: list[str], _timeout: float | None = None) -> str | None:
    """A gate that is already settled: closed by the first of `names`, open without."""
    return names[0] if names else None


class _Gate:
    """Opens when the critical steps of a batch have all answered, or at the first that
    failed (its name is then what `wait` returns)."""

    def __init__(self, names: list[str]) -> None:
        self._waiting = set(names)
        self._failed: str | None = None
        self._changed = threading.Condition()

    def done(self, name: str, ok: bool) -> None:
        with self._changed:
            if name in self._waiting:
                self._waiting.discard(name)
                if not ok and self._failed is None:
                    self._failed = name
                self._changed.notify_all()

    def wait(self, timeout: float | None = None) -> str | None:
        with self._changed:
            if not self._changed.wait_for(
                    lambda: not self._waiting or self._failed is not None, timeout):
                return GATE_PENDING
            return self._failed


class Runner:
    def __init__(
        self,
        store: Store,
        clients_for: Callable[..., Clients],
        timeline: Timeline,
        lease_seconds: float = 10,
        run_options: dict[str, Any] | None = None,
        after_cut: int = 8,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.observer = observer or NoObserver()
        self.clients_for = clients_for
        self.timeline = timeline
        self.lease_seconds = lease_seconds
        self.run_options = dict(run_options or {})
        # The phases after the cut (evidence, tags, the final check) of this many runs at
        # a time: in a burst, every run's path to the cut starts at once and the evidence
        # steps queue behind it.
        self.after_cut = threading.BoundedSemaphore(after_cut)
        self.owner = f"{process_owner()}:{id(self) & 0xFFFFFF:x}"
        # How a fleet's members are started (the Worker sets it: each on a thread).
        self.dispatch: Callable[[str], Any] = self.run
        # Owners found dead on this host: their runs are taken over without waiting.
        self.dead_owners: set[str] = set()

    def plan(self, incident: Incident) -> Playbook:
        if incident.kind == "release":
            parent = self.store.steps(incident.parent_id or "")
            contained = self.store.get(incident.parent_id or "")
            target = (contained.kind if contained is not None
                      and contained.kind in ("key", "user", "role", "bucket") else "instance")
            return release_playbook([(s.name, applied_change(s)) for s in parent], target)
        playbook = get_playbook(incident.playbook)
        if playbook is None:
            raise ValueError(f"unknown playbook {incident.playbook!r}")
        return playbook.for_target(incident.facts or {})

    def find_dead_owners(self) -> set[str]:
        """Running incidents whose worker was an earlier life of a process on this host."""
        dead = {o for o in self.store.running_owners().values() if o and owner_is_dead(o)}
        self.dead_owners |= dead
        return dead

    def run(self, incident_id: str) -> str | None:
        """Run (or resume) one incident's playbook. None when another worker has it."""
        with incident_context(incident_id):
            before = self.store.get(incident_id)
            if before is None:
                return None
            if before.kind == "fleet":
                return self._start_fleet(before)
            resumed = before.status == RUNNING
            # A fresh run says so in the transaction that starts it; a resumed one first
            # makes safe what its predecessor left, then says so.
            started = [] if resumed else self._said(self.timeline.run_started, before, False)
            if not self.store.claim_run(incident_id, self.owner, self.lease_seconds,
                                        tuple(self.dead_owners), messages=started):
                return None
            self.timeline.wake(incident_id)
            log.info("run claimed", extra={"owner": self.owner, "resumed": resumed,
                                           "from": before.lease_owner if resumed else None})
            guard = RunGuard(incident_id)
            token = run_guard.set(guard)
            stop = threading.Event()
            beat = threading.Thread(target=self._heartbeat, args=(incident_id, guard, stop),
                                    daemon=True, name=f"cordon-lease-{incident_id}")
            beat.start()
            try:
                return self._run_safely(incident_id, resumed, guard)
            finally:
                stop.set()
                beat.join()
                run_guard.reset(token)

    def _heartbeat(self, incident_id: str, guard: RunGuard, stop: threading.Event) -> None:
        """Renew the lease; when it is lost (taken, or not renewed in time because the
        database did not answer), the run stops before its next AWS call."""
        with incident_context(incident_id):
            renewed = time.monotonic()
            while not stop.wait(self.lease_seconds / 4):
                try:
                    if self.store.renew_lease(incident_id, self.owner, self.lease_seconds):
                        renewed = time.monotonic()
                        continue
                    why = "another worker holds it"
                except Exception as exc:
                    if time.monotonic() - renewed < self.lease_seconds * 0.75:
                        log.warning("lease not renewed; trying again",
                                    extra={"error": type(exc).__name__})
                        continue
                    why = f"the database did not answer ({type(exc).__name__})"
                log.warning("lease lost", extra={"owner": self.owner, "why": why})
                guard.lose(why)
                break
            else:
                return
            self._watch_takeover(incident_id, guard, stop)

    def _watch_takeover(self, incident_id: str, guard: RunGuard, stop: threading.Event
                        ) -> None:
        """After the lease is lost: once another worker holds the run, even this worker's
        fail-safe moves stop (the new owner moves the ENIs from what it finds)."""
        while True:
            try:
                current = self.store.get(incident_id)
                if current is None or (current.lease_owner or self.owner) != self.owner \
                        or current.status != RUNNING:
                    guard.taken_over.set()
                    return
            except Exception as exc:  # the database is still away: keep the fail-safe
                log.warning("run owner unknown", extra={"error": type(exc).__name__})
            if stop.wait(self.lease_seconds / 4):
                return

    def _run_safely(self, incident_id: str, resumed: bool, guard: RunGuard) -> str | None:
        try:
            return self._run(incident_id, resumed)
        except LeaseLost:
            self._lost(incident_id, guard)
            return None
        except Exception as exc:
            if guard.lost.is_set():
                self._lost(incident_id, guard)
                return None
            # Not a step's failure (those are recorded by the step): the run cannot go on.
            # It ends failed, with the reason in the thread, instead of being resumed
            # again and again.
            log.exception("run stopped")
            err = describe_error(exc)
            reason = f"the run stopped: {err.code}: {err.message}"
            current = self.store.get(incident_id)
            assert current is not None
            final = self.store.transient(current, status=FAILED, summary=reason)
            if not self.store.finish_run(incident_id, self.owner, FAILED, reason,
                                         self._said(self.timeline.run_finished, final)):
                self._lost(incident_id, guard)
                return None
            self.timeline.wake(incident_id)
            return FAILED

    def _lost(self, incident_id: str, guard: RunGuard) -> None:
        if not guard.lost.is_set():
            guard.lose("another worker holds it")
        log.warning("run abandoned: lease lost", extra={"owner": self.owner, "why": guard.why})
        incident = self.store.get(incident_id)
        if incident is not None:
            self._post(incident, f"⚠️ A worker lost this run's lease ({guard.why}) and "
                       "stopped; another worker takes it over from the recorded state.")

    def _update(self, step_id: int, **values: Any) -> None:
        """Write a step's record, only while this worker owns the run."""
        if not self.store.update_step(step_id, owner=self.owner, **values):
            self._not_owner(step_id)

    @staticmethod
    def _not_owner(step_id: int) -> NoReturn:
        """A write refused for ownership: the run stops before its next AWS call."""
        guard = run_guard.get()
        if guard is not None:
            guard.lose("another worker holds it")
        raise LeaseLost(f"step {step_id}: this worker no longer owns the run")

    def _secure(self, playbook: Playbook, records: dict[str, StepRecord],
                contexts: dict[str, StepContext], incident: Incident) -> None:
        """A resumed run first makes safe what its predecessor left half done (an ENI on
        the allow-all group), before anything else."""
        for step in playbook.steps:
            record = records[step.name]
            if step.mode != "apply" or record.captured is None or record.status in DONE:
                continue
            # What the predecessor's gate waited for (a detach) may not have answered: the
            # step's fail-safe then puts things back rather than go further.
            unfinished = [s.name for s in playbook.steps if s.phase < step.phase
                          and s.critical and records[s.name].status not in DONE]
            contexts[step.name].gate = partial(_unfinished, unfinished)
            action = get_action(step.action)
            try:
                with acting_as(step.action):
                    done = action.secure(contexts[step.name], record.captured)
            except LeaseLost:
                raise
            except Exception as exc:
                # Not fatal: the step itself runs again below and makes the same moves.
                log.warning("could not make safe on resume", extra={
                    "step": step.name, "error": describe_error(exc).code})
                continue
            if done:
                log.warning("made safe on resume", extra={"step": step.name, "done": done})
                self._post(incident, f"🛟 *{step.name}*: found half done after an "
                           f"interruption — {done}")

    def _run(self, incident_id: str, resumed: bool) -> str:
        incident = self.store.get(incident_id)
        assert incident is not None
        playbook = self.plan(incident)
        records = {r.name: r for r in self.store.ensure_steps(incident_id, playbook.step_names)}
        # A release acts on the containment's target, in its name.
        subject = self.store.get(incident.parent_id) if incident.parent_id else incident
        assert subject is not None
        # A release within a fleet's release knows which addresses go with it.
        along = {k: v for k, v in (incident.facts or {}).items() if k == "released_with"} \
            if incident.kind == "release" else {}
        target = target_of(subject, approver=incident.decided_by, extra_facts=along)
        # In the incident's account; with accounts configured, in a role session named
        # after the incident and the approver, who is also its SourceIdentity.
        clients = self.clients_for(incident.region, (subject.facts or {}).get("account_name"),
                                   identity=incident.decided_by or "cordon",
                                   session_name=f"cordon-{incident.id}-{incident.decided_by}")
        contexts = {s.name: StepContext(target=target, clients=clients,
                                        lock=self.store.principal_lock,
                                        options={**self.run_options, **(subject.options or {}),
                                                 **s.options, "release_id": incident.id})
                    for s in playbook.steps}
        if resumed:
            self._secure(playbook, records, contexts, incident)
            for ctx in contexts.values():
                ctx.memo.clear()
            self.store.enqueue_many(incident_id,
                                    self._said(self.timeline.run_started, incident, True))
            self.timeline.wake(incident_id)
        parent_captured = ({s.name: s.captured for s in self.store.steps(subject.id)}
                           if incident.kind == "release" else {})
        early = self._early(incident, subject, records, resumed)
        phases = playbook.phases()
        stopped_by: str | None = None
        ran_ahead: set[str] = set()
        for index, phase in enumerate(phases):
            current = {s.name: s for s in self.store.steps(incident_id)}
            todo = [s for s in phase
                    if s.name not in ran_ahead and current[s.name].status not in DONE]
            if stopped_by is not None:
                for step in todo:
                    self._update(records[step.name].id, status=StepStatus.NOT_RUN,
                                 summary=f"not run: {stopped_by} failed")
                continue
            # A step marked `overlap` in the next phase starts with this one (see Step).
            upcoming = phases[index + 1] if index + 1 < len(phases) else []
            ahead = [s for s in upcoming if s.overlap
                     and current[s.name].status not in DONE] if todo else []
            ran_ahead |= {s.name for s in ahead}
            batch = todo + ahead  # the waiting steps last: see _run_batch
            history = history_of(list(current.values()))
            for step in batch:
                contexts[step.name].history = history
            past_cut = not any(s.critical for s in batch)
            with self.after_cut if past_cut else contextlib.nullcontext():
                results = self._run_batch(batch, ahead, contexts, current, incident,
                                          parent_captured, early)
            failed_critical = [s.name for s, ok in zip(batch, results, strict=True)
                               if not ok and s.stops_run]
            if failed_critical:
                stopped_by = failed_critical[0]
        steps = self.store.steps(incident_id)
        status = final_status(incident, playbook, steps)
        summary = summarise(steps)
        times = {"finished_at": utcnow(), "first_change_at": first_change(steps),
                 "cut_at": cut_verified(playbook, steps) if incident.kind != "release" else None}
        final = self.store.transient(incident, status=status, summary=summary, **times)
        # The end of the run, its last message and the card's final state: one write.
        if not self.store.finish_run(incident_id, self.owner, status, summary,
                                     self._said(self.timeline.run_finished, final), **times):
            raise LeaseLost(f"{incident_id}: finished, but the lease was lost")
        if incident.kind == "release" and status == RELEASED and incident.parent_id:
            self.store.set_status(incident.parent_id, RELEASED, RELEASABLE)
        log.info("run finished", extra={"status": status})
        self._observe(incident_id)
        self.timeline.wake(incident_id)
        if incident.fleet_id:
            self.settle_fleet(incident.fleet_id)
        return status

    def _observe(self, incident_id: str) -> None:
        ended = self.store.get(incident_id)
        if ended is None:
            return
        try:
            self.observer.incident_ended(ended, self.store.steps(incident_id))
        except Exception:
            log.exception("the incident's end could not be observed")

    # fleets ------------------------------------------------------------------------

    def _start_fleet(self, fleet: Incident) -> str | None:
        """An approved fleet: its decision handed to every member, each member started
        (its own run, its own lease), the fleet running until its last member ends.
        Safe to repeat after a crash: members already decided or running are left be."""
        if fleet.status not in (APPROVED, RUNNING):
            return None
        self.store.hand_decision_to_members(fleet.id, approve=True)
        members = self.store.members(fleet.id)
        if self.store.start_fleet(fleet.id):
            self.store.enqueue_many(fleet.id, self._said(self.timeline.fleet_started,
                                                         fleet, members))
            self.timeline.wake(fleet.id)
            log.info("fleet started", extra={"members": len(members)})
        # The cut of every member starts now: each run's path to the cut goes first.
        for member in members:
            if member.status == APPROVED:
                self.dispatch(member.id)
        self.settle_fleet(fleet.id)
        return RUNNING

    def settle_fleet(self, fleet_id: str) -> None:
        """When no member is open any more, the fleet ends: contained when every member
        is, partially contained when some are, failed when none is."""
        fleet = self.store.get(fleet_id)
        if fleet is None:
            return

        undoing = fleet.playbook == RELEASE
        done, part = (RELEASED, PARTIALLY_RELEASED) if undoing else (CONTAINED, PARTIAL)

        def outcome(members: list[Incident]) -> tuple[str, str, list[Message]]:
            counts = self.store.fleet_counts(members)
            finished = counts.get(done, 0)
            status = (done if finished == len(members)
                      else part if finished or counts.get(part) else FAILED)
            summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            final = self.store.transient(fleet, status=status, summary=summary)
            return status, summary, self._said(self.timeline.fleet_finished, final, members)

        if self.store.settle_fleet(fleet_id, outcome):
            with incident_context(fleet_id):
                log.info("fleet finished")
            settled = self.store.get(fleet_id)
            if undoing and settled is not None and settled.status == RELEASED \
                    and fleet.parent_id:
                self.store.set_status(fleet.parent_id, RELEASED, RELEASABLE)
            self.timeline.wake(fleet_id)

    @staticmethod
    def _early(incident: Incident, subject: Incident, records: dict[str, StepRecord],
               resumed: bool) -> dict[str, dict[str, Any]]:
        """The prior states observed when the card was made (`Action.observe_early`), by
        step. A first run only: a resumed or retried run looks again."""
        if resumed or incident.kind == "release" or any(r.attempts for r in records.values()):
            return {}
        return dict((subject.facts or {}).get("early") or {})

    def _run_batch(self, batch: list[Step], ahead: list[Step],
                   contexts: dict[str, StepContext], current: dict[str, StepRecord],
                   incident: Incident, parent_captured: dict[str, Any],
                   early: dict[str, dict[str, Any]]) -> list[bool]:
        """The steps of a phase, and those of the next that run ahead with it, at once.
        A step running ahead holds its second move (`StepContext.gate`) until the
        critical steps of the phase have answered; every verify of such a batch comes
        after that move, off the path to it. Whether each step is done, in order."""
        gate = _Gate([s.name for s in batch if s not in ahead and s.critical])
        for step in ahead:
            contexts[step.name].gate = gate.wait
        # One write marks the batch running, with the prior states observed at card time.
        priors: dict[str, dict[str, Any]] = {}
        rows: dict[int, dict[str, Any]] = {}
        for step in batch:
            record = current[step.name]
            rows[record.id] = {"status": StepStatus.RUNNING, "started_at": utcnow(),
                               "attempts": record.attempts + 1, "error_code": None,
                               "error_message": None}
            prior = early.get(step.name)
            if step.mode == "apply" and record.captured is None and prior is not None:
                priors[step.name] = rows[record.id]["captured"] = prior
        if not self.store.update_steps(self.owner, rows):
            self._not_owner(current[batch[0].name].id)

        def start(step: Step) -> _Pending:
            pending = None
            try:
                pending = self._start(contexts[step.name], step, current[step.name],
                                      parent_captured.get(step.action), priors.get(step.name))
                return pending
            finally:
                gate.done(step.name, pending is not None and pending.ok)

        def end(pending: _Pending) -> bool:
            return self._end(pending, incident)

        # Should the shared thread pool be full (a fleet's calls waiting for EC2's
        # tokens hold its threads), the caller runs the steps itself, in this order: the
        # critical ones the gate waits for, then the cut (its seal waits on the gate,
        # open by its turn), then the rest — evidence never ahead of a cut.
        def rank(step: Step) -> int:
            if step.critical and step not in ahead:
                return 0
            return 1 if step in ahead or step.action in CUT_UNITS else 2

        order = sorted(range(len(batch)), key=lambda n: rank(batch[n]))
        ranked = [batch[n] for n in order]
        if not ahead:
            done = parallel(lambda step: end(start(step)), ranked)
        else:
            done = parallel(end, parallel(start, ranked))
        results = [False] * len(batch)
        for n, ok in zip(order, done, strict=True):
            results[n] = ok
        return results

    def _start(self, ctx: StepContext, step: Step, record: StepRecord,
               undo_captured: dict[str, Any] | None, prior: dict[str, Any] | None
               ) -> _Pending:
        """Everything of a step up to its change; the verify is left to `_end`."""
        action = get_action(step.action)
        pending = _Pending(step, record, ctx, action, time.monotonic())
        with acting_as(step.action):
            try:
                if step.mode == "undo":
                    outcome = action.undo(ctx, undo_captured or {})
                    pending.values = {"status": StepStatus.SUCCEEDED,
                                      "summary": outcome.summary}
                else:
                    self._apply(pending, prior)
            except StepHeld as exc:
                pending.values = {"status": StepStatus.NOT_RUN,
                                  "summary": f"not run: {exc.message}; {exc.done}"}
            except StepFailed as exc:
                pending.values = {"status": StepStatus.FAILED, "error_code": exc.code,
                                  "error_message": exc.message, "summary": exc.done}
            except LeaseLost:
                raise
            except Exception as exc:
                err = describe_error(exc)
                log.exception("step raised", extra={"step": step.name})
                pending.values = {"status": StepStatus.FAILED, "error_code": err.code,
                                  "error_message": err.message}
        return pending

    def _apply(self, pending: _Pending, prior: dict[str, Any] | None) -> None:
        action, ctx, record = pending.action, pending.ctx, pending.record
        # `record` was read when this phase began.
        captured = record.captured if prior is None else prior
        reason = action.skip_reason(ctx)
        if reason:
            pending.values = {"status": StepStatus.SKIPPED, "summary": reason}
            return
        if prior is not None:
            # Observed when the card was made and saved with the step's start.
            if action.in_place(prior):
                pending.values = {"status": StepStatus.SKIPPED,
                                  "summary": "already in place when the card was made; "
                                             "nothing to change"}
                return
        else:
            if action.check(ctx):
                pending.values = {"status": StepStatus.SKIPPED if captured is None
                                  else StepStatus.SUCCEEDED,
                                  "summary": "already in place; nothing to change"}
                return
            if captured is None:
                captured = action.capture(ctx)
                # The prior state is safe in the store before anything changes.
                self._update(record.id, captured=captured)
        assert captured is not None
        ctx.save = lambda more: self._update(record.id, captured=more)
        outcome = action.apply(ctx, captured)
        pending.outcome, pending.captured = outcome, captured
        pending.values = {"status": StepStatus.SUCCEEDED, "summary": outcome.summary,
                          "details": dict(outcome.details)}

    def _end(self, pending: _Pending, incident: Incident) -> bool:
        """Verify what `_start` changed, then record the step with its reply, evidence
        and revocations in one transaction."""
        step, record, outcome = pending.step, pending.record, pending.outcome
        values = pending.values
        if outcome is not None and pending.captured is not None:
            with acting_as(step.action):
                try:
                    seen = pending.action.verify(pending.ctx, pending.captured, outcome)
                    values["details"] = {**outcome.details, "verified": seen}
                except StepFailed as exc:
                    values = {"status": StepStatus.FAILED, "error_code": exc.code,
                              "error_message": exc.message, "summary": exc.done,
                              "details": dict(outcome.details)}
                except LeaseLost:
                    raise
                except Exception as exc:
                    err = describe_error(exc)
                    log.exception("verify raised", extra={"step": step.name})
                    values = {"status": StepStatus.FAILED, "error_code": err.code,
                              "error_message": err.message, "details": dict(outcome.details)}
        values["finished_at"] = utcnow()
        values["duration_ms"] = int((time.monotonic() - pending.started) * 1000)
        done = values["status"] in DONE
        view = self.store.transient(record, **values, attempts=record.attempts + 1)
        evidence = [(a.name, a.media_type, a.content)
                    for a in (outcome.artifacts if outcome is not None and done else [])]
        revocations = (outcome.details.get("revocations") or []) \
            if outcome is not None and done else []
        # The record, its reply, its evidence files and revocations: one transaction.
        if not self.store.finish_step(record.id, self.owner, incident.id, values,
                                      self._said(self.timeline.step_finished, incident, view),
                                      evidence, revocations):
            self._not_owner(record.id)
        log.info("step finished", extra={"step": step.name, "status": values["status"],
                                         "duration_ms": values["duration_ms"],
                                         "error_code": values.get("error_code")})
        self.timeline.wake(incident.id)
        return done

    def _said(self, fn: Callable[..., list[Message]], *args: Any) -> list[Message]:
        """The messages a change implies; rendering them must never stop a containment."""
        try:
            return fn(*args)
        except Exception:
            log.exception("timeline message could not be rendered")
            return []

    def _post(self, incident: Incident, text: str) -> None:
        try:
            self.store.enqueue_many(incident.id, self._said(self.timeline.note, incident, text))
            self.timeline.wake(incident.id)
        except Exception:
            log.exception("timeline note not recorded")


class Worker:
    """Runs incidents on a small thread pool, off Slack's 3-second path."""

    def __init__(self, runner: Runner, max_workers: int = 32) -> None:
        self.runner = runner
        self._pool = ThreadPoolExecutor(max_workers=max_workers,
                                        thread_name_prefix="cordon-run")
        self._lock = threading.Lock()
        self._active: set[str] = set()
        # A fleet's members each wait on AWS (and on the pacing) most of the time: they
        # get threads of their own, so that the last member's cut never waits for the
        # first members' evidence.
        self._members = ThreadPoolExecutor(max_workers=FLEET_THREADS,
                                           thread_name_prefix="cordon-member")
        runner.dispatch = lambda incident_id: self._submit(incident_id, self._members)

    def submit(self, incident_id: str) -> Future[str | None] | None:
        return self._submit(incident_id, self._pool)

    def _submit(self, incident_id: str, pool: ThreadPoolExecutor
                ) -> Future[str | None] | None:
        with self._lock:
            if incident_id in self._active:
                return None
            self._active.add(incident_id)
        return pool.submit(self._run, incident_id)

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

    def running(self) -> set[str]:
        """The incidents this worker is running now."""
        with self._lock:
            return set(self._active)

    def resume_interrupted(self) -> list[str]:
        """Start what is approved but not running, and take over runs whose worker is
        gone: at once for an earlier life of this process, after the lease otherwise.
        Messages an earlier life had claimed are released too, so that its runs' threads
        do not wait for the claims to lapse."""
        self.runner.find_dead_owners()
        store = self.runner.store
        store.release_claims([c for c in store.claimants() if owner_is_dead(c)])
        ids = self.runner.store.runs_to_resume(tuple(self.runner.dead_owners))
        resumed = [i for i in ids if self.submit(i) is not None]
        # A fleet whose last member ended in a process that died before saying so.
        for fleet_id in store.running_fleets():
            self.runner.settle_fleet(fleet_id)
        return resumed

    def shutdown(self, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait)
        self._members.shutdown(wait=wait)
