"""Which declared unit of AWS behaviour is calling AWS right now: every call is
attributed to an action or a look-up, and the tests hold each to its declared
permissions (the IAM policy is generated from them)."""

from __future__ import annotations

import contextvars

# Which declared unit of AWS behaviour is making calls right now: an action's name, or
# one of the look-ups in handlers.permissions.LOOKUPS. Tests hold every call to it.
acting: contextvars.ContextVar[str | None] = contextvars.ContextVar("acting", default=None)


class acting_as:
    def __init__(self, name: str) -> None:
        self.name = name
        self._token: contextvars.Token[str | None] | None = None

    def __enter__(self) -> None:
        self._token = acting.set(self.name)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            acting.reset(self._token)


