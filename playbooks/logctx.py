"""The incident id travels with the thread that works on it, so every log line says
which incident it is about."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager

current_incident: contextvars.ContextVar[str] = contextvars.ContextVar("incident", default="-")


@contextmanager
def incident_context(incident_id: str) -> Iterator[None]:
    token = current_incident.set(incident_id)
    try:
        yield
    finally:
        current_incident.reset(token)
