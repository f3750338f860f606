"""boto3 sessions and clients. Created on demand, never at import time."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

T = TypeVar("T")

# Enough connections for every ENI of a large instance to be modified at once.
_CLIENT_CONFIG = Config(
    max_pool_connections=32,
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
)

SessionFactory = Callable[[], boto3.session.Session]


def default_session() -> boto3.session.Session:
    return boto3.session.Session()


@dataclass
class Clients:
    """The boto3 clients of one account and region."""

    region: str
    session: boto3.session.Session
    _made: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._made:
                self._made[service] = self.session.client(
                    service, region_name=self.region, config=_CLIENT_CONFIG
                )
            return self._made[service]

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @property
    def autoscaling(self) -> Any:
        return self.client("autoscaling")

    @property
    def sts(self) -> Any:
        return self.client("sts")


class ClientPool:
    """Clients per region, shared by all runs (boto3 clients are thread-safe)."""

    def __init__(self, session_factory: SessionFactory = default_session) -> None:
        self._session_factory = session_factory
        self._session: boto3.session.Session | None = None
        self._clients: dict[str, Clients] = {}
        self._lock = threading.Lock()

    def for_region(self, region: str) -> Clients:
        with self._lock:
            if self._session is None:
                self._session = self._session_factory()
            if region not in self._clients:
                self._clients[region] = Clients(region=region, session=self._session)
            return self._clients[region]


def make_clients(session: boto3.session.Session, region: str) -> Clients:
    return Clients(region=region, session=session)


@dataclass(frozen=True)
class AwsError:
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def describe_error(exc: BaseException) -> AwsError:
    """The error code and message a responder needs, from any boto3 failure."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return AwsError(str(err.get("Code", "ClientError")), str(err.get("Message", exc)))
    if isinstance(exc, BotoCoreError):
        return AwsError(type(exc).__name__, str(exc))
    return AwsError(type(exc).__name__, str(exc))


def error_code(exc: BaseException) -> str:
    return describe_error(exc).code


def parallel(fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
    """Run fn over items concurrently; results in input order; the first error is raised
    after every call has finished, so no call is left running behind our back."""
    items = list(items)
    if not items:
        return []
    if len(items) == 1:
        return [fn(items[0])]
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        # Each call keeps the caller's context (which action is acting, which incident).
        futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in items]
        errors = [f.exception() for f in futures]
    for err in errors:
        if err is not None:
            raise err
    return [f.result() for f in futures]


def both(first: Callable[[], T], second: Callable[[], Any]) -> tuple[T, Any]:
    """Two independent calls in one round trip."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        a = pool.submit(contextvars.copy_context().run, first)
        b = pool.submit(contextvars.copy_context().run, second)
        a_err, b_err = a.exception(), b.exception()
    if a_err is not None:
        raise a_err
    if b_err is not None:
        raise b_err
    return a.result(), b.result()


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
