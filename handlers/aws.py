"""boto3 sessions and clients. Created on demand, never at import time."""

from __future__ import annotations

import contextvars
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from functools import partial
from typing import Any, TypeVar

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError

T = TypeVar("T")

# Enough connections for every ENI of a burst of containments to be modified at once.
_CLIENT_CONFIG = Config(
    max_pool_connections=128,
    retries={"mode": "standard", "max_attempts": 5},
    connect_timeout=5,
    read_timeout=30,
)

# The moves on the path to the network cut retry in Cordon's own loop (short, bounded
# backoff: see `Backoff`), not inside botocore, whose standard mode sleeps up to 20 s.
_CUT_CONFIG = _CLIENT_CONFIG.merge(Config(retries={"mode": "standard", "total_max_attempts": 1},
                                          read_timeout=10))

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
    _siblings: dict[str, Clients] = field(default_factory=dict)

    def in_region(self, region: str) -> Clients:
        """The clients of the same account (same session) in another region."""
        if region == self.region:
            return self
        with self._lock:
            if region not in self._siblings:
                self._siblings[region] = Clients(region=region, session=self.session)
            return self._siblings[region]

    def client(self, service: str, cut: bool = False) -> Any:
        """A service's client; `cut=True`: the one without botocore's own retries, for
        calls that retry under `Backoff` (the network cut)."""
        key = f"{service}/cut" if cut else service
        with self._lock:
            if key not in self._made:
                self._made[key] = self.session.client(
                    service, region_name=self.region,
                    config=_CUT_CONFIG if cut else _CLIENT_CONFIG,
                )
            return self._made[key]

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @property
    def ec2_cut(self) -> Any:
        return self.client("ec2", cut=True)

    @property
    def autoscaling(self) -> Any:
        return self.client("autoscaling")

    @property
    def sts(self) -> Any:
        return self.client("sts")


WARM_SERVICES = ("ec2", "ec2/cut", "autoscaling", "autoscaling/cut", "elbv2", "elb", "iam",
                 "sts")
_SESSION_NAME = re.compile(r"[^\w+=,.@-]")


def parse_accounts(text: str) -> dict[str, str]:
    """`prod=arn:aws:iam::222222222222:role/CordonResponder,…` → {name: role ARN}."""
    accounts: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, arn = part.partition("=")
        if not sep or not re.fullmatch(r"arn:aws[\w-]*:iam::\d{12}:role/[\w+=,.@/-]+",
                                       arn.strip()):
            raise ValueError(f"not name=role-arn: {part!r}")
        accounts[name.strip()] = arn.strip()
    return accounts


def account_id_of(role_arn: str) -> str:
    return role_arn.split(":")[4]


# Bounds of the pool's caches: role sessions (one per incident and approver) and clients.
MAX_SESSIONS = 64
MAX_CLIENTS = 256


class _Lru(OrderedDict[Any, Any]):
    """A dict that forgets its least recently used entries beyond `limit`."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def get_fresh(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class ClientPool:
    """Clients per account and region, shared by all runs (boto3 clients are
    thread-safe; sessions are only used under the pool's lock). With accounts
    configured, each account's role is assumed in a session named after who acts, with
    them as SourceIdentity: botocore's refreshable credentials renew it (same name,
    same identity) before it expires. Every role session shares the base session's
    loaded service models, so a new one costs milliseconds, not the few hundred a new
    boto3 Session does; the caches are bounded."""

    def __init__(self, session_factory: SessionFactory = default_session,
                 accounts: dict[str, str] | None = None) -> None:
        self._session_factory = session_factory
        self._session: boto3.session.Session | None = None
        self.accounts = dict(accounts or {})
        self._clients = _Lru(MAX_CLIENTS)
        self._assumed = _Lru(MAX_SESSIONS)
        self._lock = threading.RLock()

    def base_session(self) -> boto3.session.Session:
        with self._lock:
            if self._session is None:
                self._session = self._session_factory()
                # A run that lost its lease makes no further AWS call (see RunGuard).
                hook(self._session, "before-call.*.*", _guard_call)
            return self._session

    def warm(self, regions: Iterable[str]) -> None:
        """Create the clients a containment uses before any incident: creating a boto3
        client costs a few hundred milliseconds that must not fall on the path to the
        network cut. Role sessions reuse the models these load."""
        for region in regions:
            clients = self.for_region(region)
            for service in WARM_SERVICES:
                name, _, cut = service.partition("/")
                clients.client(name, cut=bool(cut))

    def for_region(self, region: str, account: str | None = None,
                   identity: str = "cordon", session_name: str | None = None) -> Clients:
        if account is None or not self.accounts:
            key: tuple[str | None, str, str] = (None, region, "")
            with self._lock:
                cached = self._clients.get_fresh(key)
                if cached is None:
                    cached = make_clients(self.base_session(), region)
                    self._clients.put(key, cached)
                return cached
        session = self._assume(account, identity, session_name or f"cordon-{identity}")
        key = (account, region, f"{identity}/{session_name}")
        with self._lock:
            cached = self._clients.get_fresh(key)
            if cached is None or cached.session is not session:
                cached = make_clients(session, region)
                self._clients.put(key, cached)
            return cached

    def _assume(self, account: str, identity: str, session_name: str) -> boto3.session.Session:
        key = (account, session_name)
        with self._lock:
            hit = self._assumed.get_fresh(key)
            if hit is not None:
                return hit
        role_arn = self.accounts[account]
        base = self.base_session()
        sts = base.client("sts", config=_CLIENT_CONFIG)

        def fetch() -> dict[str, str]:
            token = acting.set("assume-role")
            try:
                resp = sts.assume_role(
                    RoleArn=role_arn,
                    RoleSessionName=_SESSION_NAME.sub("-", session_name)[:64],
                    SourceIdentity=_SESSION_NAME.sub("-", identity)[:64],
                    DurationSeconds=3600,
                )
            finally:
                acting.reset(token)
            creds = resp["Credentials"]
            expires = creds["Expiration"]
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                    "token": creds["SessionToken"], "expiry_time": expires.isoformat()}

        credentials = RefreshableCredentials.create_from_metadata(
            metadata=fetch(), refresh_using=fetch, method="sts-assume-role")
        core = botocore.session.Session()
        # Loaded service models are shared: no second read of botocore's data files.
        core.register_component("data_loader", base._session.get_component("data_loader"))
        core._credentials = credentials  # botocore has no public setter for these
        session = boto3.session.Session(botocore_session=core)
        copy_event_handlers(base, session)
        with self._lock:
            self._assumed.put(key, session)
        return session


def hook(session: boto3.session.Session, event: str, handler: Callable[..., Any],
         first: bool = False) -> None:
    """Register a botocore event handler that sessions assumed from this one keep too."""
    if first:
        session.events.register_first(event, handler)
    else:
        session.events.register(event, handler)
    hooks = list(getattr(session, "_cordon_hooks", []))
    hooks.append((event, handler, first))
    setattr(session, "_cordon_hooks", hooks)  # noqa: B010 - boto3 sessions have no such slot


def copy_event_handlers(source: boto3.session.Session, target: boto3.session.Session) -> None:
    """Assumed sessions keep the hooks of the session they came from (tracing, tests)."""
    for event, handler, first in getattr(source, "_cordon_hooks", []):
        hook(target, event, handler, first)


def make_clients(session: boto3.session.Session, region: str) -> Clients:
    return Clients(region=region, session=session)


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


class FanOut:
    """One thread pool for every AWS fan-out of the process (a pool per call cost 11–16 %
    of the bot's CPU in a burst). A call is handed to a pool thread only when one is free
    (a slot per thread); otherwise the caller runs it itself. So nested fan-outs (a run's
    steps, a step's ENIs) never wait for a thread that cannot come: no deadlock, and
    never fewer than one call making progress per caller."""

    def __init__(self, threads: int = 256) -> None:
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


# Retrying ---------------------------------------------------------------------------

RETRYABLE_CODES = frozenset({
    "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestThrottled", "RequestThrottledException", "SlowDown", "ServiceUnavailable",
    "Unavailable", "InternalError", "InternalFailure", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete",
})
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


# Leases -------------------------------------------------------------------------------

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


def _guard_call(**_: Any) -> None:
    run_guard_check()
