"""What went wrong, in a responder's words, and whether trying again may help: AWS's error
codes, capped exponential backoff with full jitter."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

from handlers.lease import LeaseLost

T = TypeVar("T")


@dataclass(frozen=True)
class AwsError:
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


# What a responder reads for a failure that is not an AWS error answer: words, not the
# names of Python classes (botocore's, or ours).
_NO_ANSWER = (ConnectionClosedError, EndpointConnectionError, ConnectTimeoutError,
              ReadTimeoutError)
ANSWER_LOST, ANSWER_UNREADABLE, CLIENT_FAILURE, INTERNAL = (
    "NoAnswer", "UnreadableAnswer", "ClientFailure", "InternalError")


def in_words(exc: BaseException) -> str:
    """Why, in a short phrase for the thread: AWS's code, or what happened when no AWS
    answer came (its plain words rather than a code of ours)."""
    err = describe_error(exc)
    return err.message if err.code in (ANSWER_LOST, ANSWER_UNREADABLE) else err.code


def describe_error(exc: BaseException) -> AwsError:
    """The error code and message a responder needs, from any boto3 failure: AWS's own
    code, or one of a few plain codes for what never got an AWS answer."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return AwsError(str(err.get("Code", "ClientError")), str(err.get("Message", exc)))
    if isinstance(exc, _NO_ANSWER):
        return AwsError(ANSWER_LOST, "AWS did not answer (the connection was lost or timed "
                                     "out)")
    if isinstance(exc, ResponseParserError):
        return AwsError(ANSWER_UNREADABLE, "AWS's answer could not be read")
    if isinstance(exc, BotoCoreError):
        return AwsError(CLIENT_FAILURE, str(exc)[:300])
    if isinstance(exc, LeaseLost):
        return AwsError("LeaseLost", str(exc))
    return AwsError(INTERNAL, str(exc)[:300] or "an internal error")


RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException", "SlowDown", "ServiceUnavailable",
    "Unavailable", "InternalError", "InternalFailure", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete",
})
# The answers that mean "slow down" (counted per action: see `count_throttles`).
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException", "SlowDown",
})


def count_throttles(record: Callable[[str], None]) -> Callable[..., None]:
    """A botocore `needs-retry` handler that calls `record(operation)` for every throttling
    answer — each attempt, botocore's own retries included, which a caller never sees."""

    def on_attempt(response: Any = None, operation: Any = None, **_: Any) -> None:
        if not response or operation is None:
            return None
        parsed = response[1] if isinstance(response, tuple) and len(response) > 1 else {}
        code = ((parsed or {}).get("Error") or {}).get("Code")
        if code in THROTTLING_CODES:
            record(str(operation.name))
        return None

    return on_attempt


# An answer that never came, or came garbled (botocore: "Further retries may succeed").
_CONNECTION_ERRORS = (ConnectionClosedError, EndpointConnectionError, ConnectTimeoutError,
                      ReadTimeoutError, ResponseParserError)


def is_retryable(exc: BaseException) -> bool:
    """Throttling, a 5xx, or an answer that never came or could not be read: the same call
    may succeed later."""
    if isinstance(exc, _CONNECTION_ERRORS):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return describe_error(exc).code in RETRYABLE_CODES or int(status or 0) >= 500
    return False


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter (AWS's advice for throttling)."""

    attempts: int = 6
    base: float = 0.2
    cap: float = 3.0

    def delays(self) -> list[float]:
        return [random.uniform(0, min(self.cap, self.base * 2 ** n))
                for n in range(self.attempts - 1)]

    def call(self, fn: Callable[[], T]) -> T:
        """fn(), again after a pause while it fails with a retryable error."""
        for delay in self.delays():
            try:
                return fn()
            except Exception as exc:
                if not is_retryable(exc):
                    raise
            time.sleep(delay)
        return fn()


