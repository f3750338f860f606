"""Client-side token buckets: Cordon paces its own EC2 calls per account, region and API
so that a burst of containments does not meet `RequestLimitExceeded` on the path to the
network cut, and the calls of the cut take every token before evidence, tags and reads.

What real AWS does that no test here shows (moto never throttles; the tests put the
buckets in the fault layer in front of it): EC2 throttles each API of an account and
region with a token bucket of its own ("Request throttling for the Amazon EC2 API") —
`ModifyNetworkInterfaceAttribute` 100 tokens refilled 5 a second; other mutating APIs
(`ModifyInstanceAttribute`, `CreateNetworkAclEntry`, `CreateImage`, …) 50 / 5;
`CreateSnapshot(s)` 100 / 5; `CreateTags` 100 / 10; non-mutating `Describe*` 100 / 20.
An account may have had its limits raised (configure them: `CORDON_EC2_BUCKETS`), and
the buckets are the account's, not Cordon's: other tools (Terraform, an auto-remediation,
the console) draw on them too, so the pacing lowers the odds of `RequestLimitExceeded`
and the retries on the cut path remain.

Each API call takes a token when it goes on the wire (every attempt: botocore's own
retries included, as AWS counts them), waiting for one when the bucket is empty. Waiters
of one bucket are served by urgency, then in arrival order: a move off the allow-all
group (a seal, or a move back) first, then the rest of the cut's calls, then the cut's
extras (the lowered conntrack timeouts), then everything else. An interface crosses to
the open group only with the token of its move off it in hand (`pair`): under a burst no
interface waits on the allow-all group for a token."""

from __future__ import annotations

import contextvars
import heapq
import itertools
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from handlers.attribution import acting

LEAVE_OPEN, CUT, CUT_EXTRA, REST = 0, 1, 2, 3
# The units whose calls are the network cut (the moves, the ACL entries, the detach that
# must answer before the seal): their calls come first in every bucket.
CUT_UNITS = frozenset({"isolate-security-groups", "sever-tracked-flows", "isolate-subnet-nacl",
                       "isolate-subnet-routes", "remove-internet-routes",
                       "detach-from-auto-scaling"})

_urgency: contextvars.ContextVar[int | None] = contextvars.ContextVar("urgency", default=None)


@contextmanager
def urgency(level: int) -> Iterator[None]:
    """Calls made inside go at this urgency, whatever unit makes them (e.g. the cut's
    lowering of conntrack timeouts, which must not delay a seal)."""
    token = _urgency.set(level)
    try:
        yield
    finally:
        _urgency.reset(token)


def current_urgency() -> int:
    level = _urgency.get()
    if level is not None:
        return level
    return CUT if acting.get() in CUT_UNITS else REST


@dataclass
class _Pair:
    action: str
    taken: bool = False   # the first call took two tokens
    credit: int = 0       # calls already paid for


_pair: contextvars.ContextVar[_Pair | None] = contextvars.ContextVar("pair", default=None)


@contextmanager
def pair(action: str) -> Iterator[None]:
    """The first call of `action` inside takes two tokens; the next one is paid: a move to
    the open group goes only with its move off it paid for."""
    token = _pair.set(_Pair(action))
    try:
        yield
    finally:
        _pair.reset(token)


@dataclass(frozen=True)
class Limit:
    size: float     # tokens the bucket holds
    refill: float   # tokens added a second

    def __str__(self) -> str:
        return f"{self.size:g}/{self.refill:g}"


# AWS's documented default sizes ("Request throttling for the Amazon EC2 API").
EC2_DEFAULTS: dict[str, Limit] = {
    "ModifyNetworkInterfaceAttribute": Limit(100, 5),
    "CreateSnapshot": Limit(100, 5),
    "CreateSnapshots": Limit(100, 5),
    "CreateTags": Limit(100, 10),
    "describe": Limit(100, 20),   # every non-mutating API (Describe*, Get*)
    "mutating": Limit(50, 5),     # every other mutating API
}
_LIMIT = re.compile(r"^\s*([A-Za-z]+)\s*=\s*(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)\s*$")


def parse_limits(text: str) -> dict[str, Limit]:
    """`ModifyNetworkInterfaceAttribute=200/10,mutating=100/10` (an API's name, or
    `describe`/`mutating` for the rest) → {name: Limit}; ValueError when malformed."""
    limits: dict[str, Limit] = {}
    for part in (p for p in text.split(",") if p.strip()):
        m = _LIMIT.match(part)
        if not m or float(m.group(2)) < 1 or float(m.group(3)) <= 0:
            raise ValueError(f"{part.strip()!r}: expected NAME=SIZE/REFILL, e.g. "
                             "ModifyNetworkInterfaceAttribute=100/5 (size ≥ 1, refill > 0)")
        limits[m.group(1)] = Limit(float(m.group(2)), float(m.group(3)))
    return limits


def is_read(action: str) -> bool:
    return action.startswith(("Describe", "Get"))


class Bucket:
    """One API's tokens; waiters served by (urgency, arrival)."""

    def __init__(self, limit: Limit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.tokens = limit.size
        self.stamp = clock()
        self.cond = threading.Condition()
        self.queue: list[tuple[int, int]] = []
        self.order = itertools.count()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.limit.size, self.tokens + (now - self.stamp) * self.limit.refill)
        self.stamp = now

    def busy(self) -> bool:
        """Someone waiting, or less than half the bucket left."""
        with self.cond:
            self._refill()
            return bool(self.queue) or self.tokens < self.limit.size / 2

    def take(self, level: int, count: int = 1) -> float:
        """Take `count` tokens, waiting for them as long as it takes; the seconds waited."""
        start = self.clock()
        with self.cond:
            ticket = (level, next(self.order))
            heapq.heappush(self.queue, ticket)
            try:
                while True:
                    self._refill()
                    if self.queue[0] == ticket and self.tokens >= count:
                        self.tokens -= count
                        return self.clock() - start
                    head = self.queue[0] == ticket
                    wait = (count - self.tokens) / self.limit.refill if head else None
                    self.cond.wait(timeout=wait)
            finally:
                self.queue.remove(ticket)
                heapq.heapify(self.queue)
                self.cond.notify_all()


def with_headroom(limit: Limit) -> Limit:
    """What Cordon allows itself of a bucket: a tenth of it (at least a token) and a
    twentieth of its refill kept spare. A call granted a token reaches AWS a moment later,
    and calls granted in one order may land in another: a full bucket at AWS drops the
    refill it cannot hold, so a pacer that spends the last token can still meet an empty
    bucket there. The spare absorbs that."""
    spare = max(1.0, limit.size * 0.1)
    return Limit(max(1.0, limit.size - spare), limit.refill * 0.95)


class Pacer:
    """The buckets of every account, region and EC2 API Cordon calls."""

    def __init__(self, limits: dict[str, Limit] | None = None) -> None:
        merged = {**EC2_DEFAULTS, **(limits or {})}
        self.limits = {k: with_headroom(v) for k, v in merged.items()}
        self._buckets: dict[tuple[str, str, str], Bucket] = {}
        self._lock = threading.Lock()
        self.waited: dict[str, float] = {}  # seconds spent waiting, by API

    def limit_for(self, action: str) -> Limit:
        if action in self.limits:
            return self.limits[action]
        return self.limits["describe" if is_read(action) else "mutating"]

    def bucket(self, scope: str, region: str, action: str) -> Bucket:
        key = (scope, region, action)
        with self._lock:
            found = self._buckets.get(key)
            if found is None:
                found = self._buckets[key] = Bucket(self.limit_for(action))
            return found

    def busy(self, scope: str, region: str, action: str) -> bool:
        """Whether a burst is drawing on this bucket now."""
        return self.bucket(scope, region, action).busy()

    def take(self, scope: str, region: str, action: str) -> None:
        paired = _pair.get()
        bucket = self.bucket(scope, region, action)
        count = 1
        if paired is not None and paired.action == action:
            if paired.credit > 0:
                paired.credit -= 1
                return
            # A bucket that holds fewer than two tokens could never hand out both.
            if not paired.taken and bucket.limit.size >= 2:
                paired.taken, paired.credit, count = True, 1, 2
        waited = bucket.take(current_urgency(), count)
        if waited > 0:
            with self._lock:
                self.waited[action] = self.waited.get(action, 0.0) + waited

    def attach(self, client: Any, scope: str, region: str) -> None:
        """Pace an EC2 client's every attempt (`before-send` fires once per attempt)."""

        def before_send(event_name: str, **_: Any) -> None:
            self.take(scope, region, event_name.rsplit(".", 1)[-1])

        client.meta.events.register_first("before-send.ec2.*", before_send)
