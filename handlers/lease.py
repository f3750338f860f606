"""Leases: a worker that no longer owns a run makes no further AWS call for it — but
the fail-safe moves that take an ENI off the allow-all group, and, once another worker
holds the run, not even a move back."""

from __future__ import annotations

import contextvars
import threading
from typing import Any


class LeaseLost(Exception):
    """This worker no longer owns the run: it makes no further AWS call for it."""


class RunGuard:
    """Set while a worker runs an incident; the botocore hook below refuses every AWS
    call once the run's lease is lost, except the fail-safe moves (`fail_safe()`)."""

    def __init__(self, incident_id: str) -> None:
        self.incident_id = incident_id
        self.lost = threading.Event()
        # Another worker holds the run now: even the fail-safe moves stop, or a move back
        # retried here could land after the new owner sealed the ENI.
        self.taken_over = threading.Event()
        self.why = ""

    def lose(self, why: str) -> None:
        self.why = why
        self.lost.set()

    def check(self) -> None:
        if self.lost.is_set() and not _exempt.get():
            raise LeaseLost(f"{self.incident_id}: {self.why}")


run_guard: contextvars.ContextVar[RunGuard | None] = contextvars.ContextVar("run_guard",
                                                                           default=None)
_exempt: contextvars.ContextVar[bool] = contextvars.ContextVar("lease_exempt", default=False)


class fail_safe:
    """Calls that take an instance off the allow-all group go out even after the lease
    was lost: leaving it there would be worse than two workers making the same move."""

    def __enter__(self) -> None:
        self._token = _exempt.set(True)

    def __exit__(self, *exc: object) -> None:
        _exempt.reset(self._token)


class TakenOver(LeaseLost):
    """Another worker holds this run: not even a fail-safe move goes out from here."""


def taken_over_check() -> None:
    """Raise TakenOver once another worker holds this run (fail-safe moves included)."""
    guard = run_guard.get()
    if guard is not None and guard.taken_over.is_set():
        raise TakenOver(f"{guard.incident_id}: another worker holds the run")


def run_guard_check() -> None:
    """Raise LeaseLost when this run's lease is lost (outside `fail_safe`)."""
    guard = run_guard.get()
    if guard is not None:
        guard.check()


def guard_call(**_: Any) -> None:
    run_guard_check()
