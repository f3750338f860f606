"""One thread pool for every AWS fan-out of the process."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

T = TypeVar("T")


class FanOut:
    """One thread pool for every AWS fan-out of the process (a pool per call cost 11–16 %
    of the bot's CPU in a burst). A call is handed to a pool thread only when one is free
    (a slot per thread); otherwise the caller runs it itself. So nested fan-outs (a run's
    steps, a step's ENIs) never wait for a thread that cannot come: no deadlock, and
    never fewer than one call making progress per caller."""

    def __init__(self, threads: int = 1024) -> None:
        self._threads = threads
        self._slots = threading.BoundedSemaphore(threads)
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self._threads,
                                                    thread_name_prefix="cordon-aws")
            return self._executor

    def run(self, calls: list[Callable[[], Any]]) -> list[tuple[Any, BaseException | None]]:
        """Every call, concurrently where threads are free; (result, error) in order."""
        def slot(call: Callable[[], Any]) -> Any:
            try:
                return call()
            finally:
                self._slots.release()

        futures: list[Future[Any] | None] = []
        for call in calls[1:]:  # the caller always runs the first itself
            if self._slots.acquire(blocking=False):
                ctx = contextvars.copy_context()  # which action, which incident, the lease
                futures.append(self._pool().submit(ctx.run, slot, call))
            else:
                futures.append(None)
        outcomes: list[tuple[Any, BaseException | None]] = []
        for call, future in zip(calls, [None, *futures], strict=True):
            if future is None:
                try:
                    outcomes.append((call(), None))
                except Exception as exc:
                    outcomes.append((None, exc))
            else:
                outcomes.append((None, None))
        for index, future in enumerate(futures, start=1):
            if future is not None:
                error = future.exception()
                outcomes[index] = (None if error else future.result(), error)
        return outcomes


_fan_out = FanOut()


def parallel(fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
    """Run fn over items concurrently; results in input order; the first error is raised
    after every call has finished, so no call is left running behind our back."""
    items = list(items)
    if not items:
        return []
    if len(items) == 1:
        return [fn(items[0])]
    outcomes = _fan_out.run([partial(fn, item) for item in items])
    for _, error in outcomes:
        if error is not None:
            raise error
    return [result for result, _ in outcomes]


def both(first: Callable[[], T], second: Callable[[], Any]) -> tuple[T, Any]:
    """Two independent calls in one round trip."""
    (a, a_err), (b, b_err) = _fan_out.run([first, second])
    if a_err is not None:
        raise a_err
    if b_err is not None:
        raise b_err
    return a, b


