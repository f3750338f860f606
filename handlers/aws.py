"""boto3 sessions and clients: the pool, assumed roles in other accounts, the clients of
the path to the cut. Created on demand, never at import time."""

from __future__ import annotations

import functools
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.loaders import create_loader

from handlers.attribution import acting
from handlers.lease import guard_call
from handlers.pacing import Pacer
from handlers.retry import count_throttles

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
    scope: str = ""  # the account's configured name ("": Cordon's own)
    pacer: Pacer | None = None  # EC2's token buckets, kept on Cordon's side
    _made: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _siblings: dict[str, Clients] = field(default_factory=dict)

    def in_region(self, region: str) -> Clients:
        """The clients of the same account (same session) in another region."""
        if region == self.region:
            return self
        with self._lock:
            if region not in self._siblings:
                self._siblings[region] = Clients(region=region, session=self.session,
                                                 scope=self.scope, pacer=self.pacer)
            return self._siblings[region]

    def client(self, service: str, cut: bool = False) -> Any:
        """A service's client; `cut=True`: the one without botocore's own retries, for
        calls that retry under `Backoff` (the network cut)."""
        key = f"{service}/cut" if cut else service
        with self._lock:
            if key not in self._made:
                made = self.session.client(
                    service, region_name=self.region,
                    config=_CUT_CONFIG if cut else _CLIENT_CONFIG,
                )
                if service == "ec2" and self.pacer is not None:
                    self.pacer.attach(made, self.scope, self.region)
                self._made[key] = made
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
                 accounts: dict[str, str] | None = None, pacer: Pacer | None = None,
                 on_throttle: Callable[[str], None] | None = None) -> None:
        self._session_factory = session_factory
        self.pacer = pacer
        self.on_throttle = on_throttle  # told the action of every throttling answer
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
                hook(self._session, "before-call.*.*", guard_call)
                if self.on_throttle is not None:
                    hook(self._session, "needs-retry.*.*", count_throttles(self.on_throttle))
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
                    cached = make_clients(self.base_session(), region, pacer=self.pacer)
                    self._clients.put(key, cached)
                return cached
        session = self._assume(account, identity, session_name or f"cordon-{identity}")
        key = (account, region, f"{identity}/{session_name}")
        with self._lock:
            cached = self._clients.get_fresh(key)
            if cached is None or cached.session is not session:
                cached = make_clients(session, region, account, self.pacer)
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


def make_clients(session: boto3.session.Session, region: str, scope: str = "",
                 pacer: Pacer | None = None) -> Clients:
    return Clients(region=region, session=session, scope=scope, pacer=pacer)




@functools.cache
def known_regions() -> frozenset[str]:
    """Every region of every partition, from botocore's partition data (7 kB; its 1.2 MB
    endpoint data is not read at start-up). The partitions' pseudo-regions ("aws-global")
    are not regions."""
    partitions = create_loader().load_data("partitions")
    return frozenset(region for partition in partitions["partitions"]
                     for region in partition["regions"] if not region.endswith("-global"))
