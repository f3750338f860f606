"""The step protocol: an action declares its name, its IAM permissions, and
check / capture / apply / verify / undo. The list of actions, by kebab-case name, is
handlers.registry."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from handlers.aws import Clients

T = TypeVar("T")


class StepStatus(StrEnum):
    """A step's record: pending → running → succeeded | failed | skipped | not-run."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    NOT_RUN = "not-run"


# A step in one of these needs no more work.
STEP_DONE = (StepStatus.SUCCEEDED, StepStatus.SKIPPED)


class StepFailed(Exception):
    """An action could not reach its target state. `code` is the AWS error code
    (or a Cordon code such as VerificationFailed); `done` says what was changed."""

    def __init__(self, code: str, message: str, done: str = "") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.done = done


class StepHeld(StepFailed):
    """The step was held back (a critical step before it failed) and left the target as
    it found it: it is recorded not-run, with what it did meanwhile."""

    def __init__(self, message: str, done: str = "") -> None:
        super().__init__("Held", message, done)


class VerificationFailed(StepFailed):
    def __init__(self, message: str, done: str = "") -> None:
        super().__init__("VerificationFailed", message, done)


@dataclass
class Target:
    """What a step acts on, and the facts looked up when the request was made."""

    kind: str
    resource_id: str
    region: str
    account: str | None
    incident_id: str
    facts: dict[str, Any] = field(default_factory=dict)
    requester: str = ""
    approver: str = ""
    reason: str = ""


_local_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


@contextmanager
def local_lock(key: str) -> Iterator[None]:
    """One writer at a time in this process (the store's lock also spans replicas)."""
    with _local_locks[key]:
        yield


# See StepContext.gate.
Gate = Callable[[float | None], str | None]
GATE_PENDING = "(not answered yet)"


@dataclass
class StepContext:
    target: Target
    clients: Clients
    # The step's options from the playbook, and run-wide settings (e.g. asg_decrement).
    options: dict[str, Any] = field(default_factory=dict)
    # Earlier steps of this run by name: status, summary, details, captured.
    history: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-step memo, so that check() and capture() share one describe round trip.
    memo: dict[str, Any] = field(default_factory=dict)
    # Set by the runner for a step that starts alongside the steps before it: waits (at
    # most `timeout` seconds; None: until then) for their critical changes to answer, and
    # returns None (go on), the name of one that failed (do not), or GATE_PENDING (they
    # have not answered in time).
    gate: Gate = field(default=lambda timeout=None: None, repr=False)
    # Saves the prior state again when apply() finds more of it (an ENI attached after
    # the card was made), before changing that part.
    save: Callable[[dict[str, Any]], None] = field(default=lambda _captured: None, repr=False)
    # Held around a read-modify-write of a principal's revocation policy, keyed by the
    # principal's ARN: one writer at a time across threads and replicas (the store's lock).
    lock: Callable[[str], AbstractContextManager[None]] = field(default=local_lock, repr=False)

    def remember(self, key: str, compute: Callable[[], T]) -> T:
        """compute() once per step run; check(), capture() and apply() share it."""
        if key not in self.memo:
            self.memo[key] = compute()
        value: T = self.memo[key]
        return value


@dataclass
class Artifact:
    """A file of evidence: kept in the store and posted in the thread."""

    name: str
    content: bytes
    media_type: str = "application/octet-stream"


@dataclass
class Outcome:
    """What apply() changed, in one line for the thread, plus details for the store."""

    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    artifacts: list[Artifact] = field(default_factory=list)


class Action(ABC):
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    permissions: ClassVar[tuple[str, ...]] = ()
    reversible: ClassVar[bool] = True
    # Whether a failure can leave part of the change in place (a release then undoes it).
    partial_undo: ClassVar[bool] = False

    def skip_reason(self, ctx: StepContext) -> str | None:
        """Why this step does not apply to this run (e.g. an option not given), or None."""
        return None

    @abstractmethod
    def check(self, ctx: StepContext) -> bool:
        """True when the target is already in the state apply() would bring about."""

    @abstractmethod
    def capture(self, ctx: StepContext) -> dict[str, Any]:
        """The prior state apply() is about to change (saved before apply runs)."""

    def observe_early(self, ctx: StepContext) -> dict[str, Any] | None:
        """When the card is made, before approval: the prior state capture() would record,
        so that after the click apply() goes out at once, with no describe in front of it.
        Changes nothing of the target (creating Cordon's own isolation groups is the one
        change allowed before approval). None: not known early; the step checks and
        captures after the click, as usual."""
        return None

    def in_place(self, captured: dict[str, Any]) -> bool:
        """Whether a prior state observed early already is the state apply() brings about."""
        return False

    @abstractmethod
    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        """Make the change; return what changed."""

    @abstractmethod
    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        """Describe again; raise VerificationFailed on mismatch; return what was seen."""

    def secure(self, ctx: StepContext, captured: dict[str, Any]) -> str | None:
        """Called first when a run resumes after an interruption, for a step that saved
        its prior state but did not finish: make safe what a half-done apply may have
        left (e.g. an ENI on the allow-all group). Returns what it did, or None."""
        return None

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        """Restore `captured`. Irreversible actions (reversible = False) are never undone."""
        raise StepFailed("NotReversible", f"{self.name} cannot be undone")

    def describe_undo(self, captured: dict[str, Any]) -> str:
        """What undo() would restore, for the release card."""
        return "restore the recorded prior state"


class Observation(Action):
    """A step that only looks and reports: nothing to check first, capture or undo."""

    reversible: ClassVar[bool] = False

    def check(self, ctx: StepContext) -> bool:
        return False

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return {}


def check_declared(cls: type[Action]) -> type[Action]:
    """An action must have a name and declare the IAM actions it calls."""
    if not cls.name:
        raise ValueError(f"action {cls.__name__} has no name")
    if not cls.permissions:
        raise ValueError(f"action {cls.name} declares no IAM permissions")
    return cls
