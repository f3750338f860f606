"""Typed errors the Slack side renders; each carries a short user-facing message."""

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
    pass


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
