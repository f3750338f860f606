"""Typed errors the Slack side renders; each carries a short user-facing message.

A message is plain text (a literal may be marked `…`, which Slack shows as code and a
terminal shows as it is). Nothing here is Slack markup: the Slack side escapes the whole
message, and renders the typed fields (a person, `by`) its own way."""

from __future__ import annotations


class CordonError(Exception):
    """An error whose message is fit to show the person who caused it."""


class BadInput(CordonError):
    pass


class TargetNotFound(CordonError):
    pass


class NotAuthorized(CordonError):
    pass


class AlreadyDecided(CordonError):
    def __init__(self, message: str, by: str | None = None) -> None:
        super().__init__(message)
        self.by = by  # the Slack user who decided, named in the message by id


class RequestExpired(CordonError):
    pass


class UnknownIncident(CordonError):
    pass


class AwsLookupFailed(CordonError):
    pass


def is_store_outage(exc: BaseException) -> bool:
    """The database did not answer (locked past its timeout, unreachable, disk full)."""
    from sqlalchemy.exc import OperationalError, TimeoutError

    return isinstance(exc, OperationalError | TimeoutError)
