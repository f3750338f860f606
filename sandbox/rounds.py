"""Counting sequential AWS round trips: a fixed latency added to every request, and the
interval of each call recorded, so that the longest chain of calls that waited for one
another can be read off afterwards — a count that a slow machine does not change.
Used by the benchmarks and by the tests that hold the path to the cut to its length."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import boto3

from handlers.aws import hook
from sandbox.world import new_session


@dataclass
class Call:
    operation: str
    params: dict[str, Any]
    start: float
    end: float = 0.0


@dataclass
class Recorder:
    """Adds `latency` to every AWS request and records when each call ran."""

    latency: float
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def session(self) -> boto3.session.Session:
        return self.attach(new_session())

    def factory(self, make: Callable[[], boto3.session.Session]
                ) -> Callable[[], boto3.session.Session]:
        """Sessions from `make` (another recorder's, say), recorded too."""
        return lambda: self.attach(make())

    def attach(self, session: boto3.session.Session) -> boto3.session.Session:
        hook(session, "before-parameter-build.*.*", self._params)
        hook(session, "before-call.*.*", self._start)
        hook(session, "before-send.*.*", self._delay, first=True)
        hook(session, "after-call.*.*", self._end)
        hook(session, "after-call-error.*.*", self._end)
        return session

    def _params(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["rounds_params"] = dict(params)

    def _start(self, model: Any, context: dict[str, Any], **_: Any) -> None:
        call = Call(model.name, context.get("rounds_params", {}), time.monotonic())
        with self.lock:
            self.calls.append(call)
        context["rounds_call"] = call

    def _delay(self, **_: Any) -> None:
        time.sleep(self.latency)

    def _end(self, context: dict[str, Any], **_: Any) -> None:
        call = context.get("rounds_call")
        if call is not None and not call.end:
            call.end = time.monotonic()

    def since(self, t0: float) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.start >= t0 and c.end]


def sequential_round_trips(calls: list[Call], until: float) -> int:
    """Length of the longest chain of calls that each started after the previous one
    ended: the round trips a responder waits for, however many ran side by side."""
    depth: dict[int, int] = {}
    ordered = sorted((c for c in calls if c.end <= until + 1e-9), key=lambda c: c.start)
    for i, call in enumerate(ordered):
        before = [depth[j] for j, other in enumerate(ordered[:i]) if other.end <= call.start]
        depth[i] = 1 + max(before, default=0)
    return max(depth.values(), default=0)


def seal_moves(calls: list[Call], sealed_group: str) -> list[Call]:
    return [c for c in calls if c.operation == "ModifyNetworkInterfaceAttribute"
            and c.params.get("Groups") == [sealed_group]]


def sealed_at(calls: list[Call], sealed_group: str, enis: int) -> float:
    """When the last of `enis` moves to the sealed group answered."""
    moves = seal_moves(calls, sealed_group)
    assert len(moves) == enis, f"expected {enis} moves to the sealed group, saw {len(moves)}"
    return max(c.end for c in moves)
