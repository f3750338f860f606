"""The records: incidents, approvals, decisions, step records (with the captured prior
state and timings), evidence, the outbox of Slack messages, revocations. Tables and
columns that auditors query keep their names; a change to them is a migration."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from playbooks.status import IncidentStatus, StepStatus

PENDING = IncidentStatus.PENDING

_ID_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

# Outbox kinds: a thread reply (its text), the card to render again from the store, an
# evidence file to upload. A message is written in the transaction of the change that
# implies it, so that no crash can separate the two.
THREAD, CARD, FILE = "thread", "card", "file"
# A card that could not be posted while Slack's Web API was unreachable: posted when it is.
POST_CARD = "post_card"
Message = tuple[str, dict[str, Any]]


# An outbox row closed without being sent: a later update of the same card replaced it.
SUPERSEDED = "superseded by a later update of the card; not sent"


def utcnow() -> datetime:
    """Naive UTC: both SQLite and PostgreSQL give back exactly what was stored."""
    return datetime.now(UTC).replace(tzinfo=None)


def new_incident_id() -> str:
    return "CRD-" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(6))


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime()}


class Incident(Base):
    __tablename__ = "incidents"
    __table_args__ = (Index("ix_incidents_created_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    # "instance" (a containment) or "release" (undoing the containment `parent_id`).
    kind: Mapped[str] = mapped_column(String(16), default="instance")
    parent_id: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # A member of a fleet request: the fleet incident whose card approved it.
    fleet_id: Mapped[str | None] = mapped_column(String(16), nullable=True, index=True)
    target_id: Mapped[str] = mapped_column(String(64), index=True)
    region: Mapped[str] = mapped_column(String(32))
    account: Mapped[str] = mapped_column(String(32), default="")
    playbook: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    requester: Mapped[str] = mapped_column(String(32))
    channel_id: Mapped[str] = mapped_column(String(32))
    card_ts: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(24), index=True, default=PENDING)
    facts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    decided_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(nullable=True)
    snapshots_reported_at: Mapped[datetime | None] = mapped_column(nullable=True)
    approvals_required: Mapped[int] = mapped_column(Integer, default=1)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The lifecycle (see playbooks.lifecycle): when the card went up, the first change
    # in AWS began, and the cut was verified.
    card_posted_at: Mapped[datetime | None] = mapped_column(nullable=True)
    first_change_at: Mapped[datetime | None] = mapped_column(nullable=True)
    cut_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # Contained automatically: the rule that decided; when a person kept or released it;
    # when the channel was reminded that nobody had.
    auto_rule: Mapped[str | None] = mapped_column(String(200), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    reminded_at: Mapped[datetime | None] = mapped_column(nullable=True)


class ApprovalVote(Base):
    """One approver's approval of a wide containment; a person counts once."""

    __tablename__ = "approval_votes"
    __table_args__ = (UniqueConstraint("incident_id", "user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    user_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Decision(Base):
    """Every click on a card, including the refused ones: the audit trail."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    user_id: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class StepRecord(Base):
    __tablename__ = "steps"
    __table_args__ = (Index("ix_steps_name_status", "name", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(64))
    # pending → running → succeeded | failed | skipped | not-run
    status: Mapped[str] = mapped_column(String(16), default=StepStatus.PENDING)
    captured: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    summary: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    duration_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Evidence(Base):
    """A file captured during a run, kept with its SHA-256."""

    __tablename__ = "evidence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    step: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxMessage(Base):
    """A Slack message to send: written first, sent after, retried until sent."""

    __tablename__ = "outbox"
    # The sender's query: rows not sent yet, in order.
    __table_args__ = (Index("ix_outbox_unsent", "sent_at", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # "thread" | "card"
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_until: Mapped[datetime | None] = mapped_column(nullable=True)
    # The process that claimed it (host:pid:start), so that its next life can release it.
    claimed_by: Mapped[str | None] = mapped_column(String(96), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Revocation(Base):
    """A deny on credentials issued before a cut-off. Kept through a release; removed
    by the sweep once every token it could hit has expired (`remove_after`)."""

    __tablename__ = "revocations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # instance | role | user
    principal: Mapped[str] = mapped_column(String(128))
    policy: Mapped[str] = mapped_column(String(128))
    sid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    cutoff: Mapped[str] = mapped_column(String(32))
    remove_after: Mapped[datetime] = mapped_column(index=True)
    removed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")


class Watch(Base):
    """CloudTrail looked up after a cut for what the cut should have stopped: `subjects`
    are LookupEvents attributes, checked in `regions` until `until`."""

    __tablename__ = "watches"

    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), primary_key=True)
    subjects: Mapped[list[dict[str, str]]] = mapped_column(JSON)
    regions: Mapped[list[str]] = mapped_column(JSON)
    since: Mapped[datetime]
    until: Mapped[datetime]
    next_check_at: Mapped[datetime] = mapped_column(index=True)
    claimed_until: Mapped[datetime | None] = mapped_column(nullable=True)
    seen: Mapped[list[str]] = mapped_column(JSON, default=list)  # CloudTrail event ids
    events: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[dict[str, Any]] = mapped_column(default=dict)  # region → error code
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)


class HealthBeat(Base):
    """One row that /healthz rewrites: the database takes a write, or it is not healthy."""

    __tablename__ = "health"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)


# A locked or stuck database answers within these, instead of hanging a click: the person
# is told, and the sweep finishes the work later.
