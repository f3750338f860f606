"""The database is the source of truth: incidents, decisions, step records (with the
captured prior state and timings) and the outbox of Slack messages. SQLite by
default; PostgreSQL for several replicas. Every state change that must happen once
is a conditional UPDATE whose row count says who won."""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    DateTime,
    Engine,
    exists,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased, sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from playbooks.database import HEALTH_TIMEOUT_S, LOCK_TIMEOUT_S, MIGRATION_LOCK, make_engine
from playbooks.models import (
    CARD,
    FILE,
    SUPERSEDED,
    ApprovalVote,
    Decision,
    Evidence,
    HealthBeat,
    Incident,
    Message,
    OutboxMessage,
    Revocation,
    StepRecord,
    new_incident_id,
    utcnow,
)
from playbooks.status import FINAL_STATES as FINAL_STATES
from playbooks.status import OPEN_STATES as OPEN_STATES
from playbooks.status import RELEASABLE as RELEASABLE
from playbooks.status import RETRYABLE as RETRYABLE
from playbooks.status import IncidentStatus, StepStatus

# The statuses live in playbooks.status; these names are kept for the modules that use them.
PENDING, APPROVED, RUNNING = (IncidentStatus.PENDING, IncidentStatus.APPROVED,
                              IncidentStatus.RUNNING)
CONTAINED, PARTIAL, FAILED = (IncidentStatus.CONTAINED, IncidentStatus.PARTIAL,
                              IncidentStatus.FAILED)
DENIED, EXPIRED = IncidentStatus.DENIED, IncidentStatus.EXPIRED
RELEASED, PARTIALLY_RELEASED = IncidentStatus.RELEASED, IncidentStatus.PARTIALLY_RELEASED

class _Refused(Exception):
    """A conditional write that did not match: the transaction is rolled back."""


def _won(result: Any) -> bool:
    """Whether a conditional UPDATE changed its row: the one place that says who won."""
    return int(result.rowcount) == 1


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._principal_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)

    @classmethod
    def from_url(cls, url: str) -> Store:
        store = cls(make_engine(url))
        store.migrate()
        return store

    def migrate(self) -> None:
        """Bring the schema to the newest revision (Alembic), under a lock so that two
        replicas starting together do not race: PostgreSQL's advisory lock, SQLite's
        write lock. A database made before migrations (tables, no version) is taken as
        the baseline and upgraded from there; its rows are kept."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", "playbooks:migrations")
        with self.engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # the file's write lock
            try:
                tables = set(inspect(conn).get_table_names())
                config.attributes["connection"] = conn
                if "incidents" in tables and "alembic_version" not in tables:
                    command.stamp(config, "0001")
                command.upgrade(config, "head")
                conn.commit()
            finally:
                if conn.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"),
                                 {"key": MIGRATION_LOCK})
                    conn.commit()

    def health(self) -> tuple[bool, str]:
        """Whether the database takes a write now, within a short timeout (a lock held
        on the incidents, a full disk, a read-only database all fail it), and why not."""
        try:
            with self.engine.connect() as conn:
                if self.engine.dialect.name == "postgresql":
                    conn.execute(text(f"SET LOCAL lock_timeout = '{HEALTH_TIMEOUT_S}s'"))
                    conn.execute(text(f"SET LOCAL statement_timeout = '{HEALTH_TIMEOUT_S + 1}s'"))
                else:
                    conn.execute(text(f"PRAGMA busy_timeout = {HEALTH_TIMEOUT_S * 1000}"))
                # What a click writes: a row of the incidents (none is changed), and a beat.
                conn.execute(update(Incident).where(Incident.id == "-").values(status=PENDING))
                beat = conn.execute(update(HealthBeat).where(HealthBeat.id == 1)
                                    .values(at=utcnow()))
                if beat.rowcount == 0:
                    conn.execute(insert(HealthBeat).values(id=1, at=utcnow()))
                conn.commit()
                if self.engine.dialect.name != "postgresql":
                    conn.execute(text(f"PRAGMA busy_timeout = {LOCK_TIMEOUT_S * 1000}"))
        except Exception as exc:
            cause = str(getattr(exc, "orig", exc)).strip().splitlines()[0][:200]
            return False, f"cannot take a write: {type(exc).__name__}: {cause}"
        return True, "takes writes"

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as s:
            yield s

    # incidents ---------------------------------------------------------------------

    def create_incident(self, *, ttl_seconds: int, **fields: Any) -> Incident:
        now = utcnow()
        inc = Incident(id=new_incident_id(), created_at=now,
                       expires_at=now + timedelta(seconds=ttl_seconds), status=PENDING,
                       **fields)
        with self.session() as s:
            s.add(inc)
        return inc

    def get(self, incident_id: str) -> Incident | None:
        with self.session() as s:
            return s.get(Incident, incident_id)

    def open_for_target(self, target_id: str) -> Incident | None:
        with self.session() as s:
            return s.scalars(
                select(Incident)
                .where(Incident.target_id == target_id, Incident.status.in_(OPEN_STATES))
                .order_by(Incident.created_at.desc())
            ).first()

    def for_target(self, target_id: str, limit: int = 5) -> list[Incident]:
        with self.session() as s:
            return list(s.scalars(
                select(Incident).where(Incident.target_id == target_id)
                .order_by(Incident.created_at.desc()).limit(limit)
            ))

    def recent(self, limit: int = 10) -> list[Incident]:
        with self.session() as s:
            return list(s.scalars(
                select(Incident).order_by(Incident.created_at.desc()).limit(limit)
            ))

    def set_card(self, incident_id: str, channel_id: str, ts: str, team_id: str = "",
                 messages: Sequence[Message] = (), plan_pending: bool = False) -> None:
        """Where the card is: only a click on this message may decide the incident. With
        `plan_pending`, the card could not show the whole plan: it cannot be approved
        until `messages` (the full plan, in its thread) have been sent."""
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is None:
                return
            inc.channel_id, inc.card_ts = channel_id, ts
            extra = {"team_id": team_id} if team_id else {}
            if plan_pending:
                extra["plan"] = "pending"
            if extra:
                inc.facts = {**(inc.facts or {}), **extra}
            self._add_messages(s, incident_id, messages)

    def add_finding(self, incident_id: str, finding_id: str,
                    messages: Sequence[Message] = ()) -> bool:
        """Record one more finding about an open incident's target, with its thread note,
        once: False (nothing written) when that finding was recorded already — a message
        delivered again after a crash adds nothing."""
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is None:
                return False
            facts = dict(inc.facts or {})
            seen = list(facts.get("findings") or [])
            if finding_id in seen:
                return False
            facts["findings"] = [*seen, finding_id]
            inc.facts = facts
            self._add_messages(s, incident_id, messages)
            return True

    @contextmanager
    def target_lock(self, target_id: str) -> Iterator[None]:
        """Held while one replica decides whether a target already has an open request
        and, if not, makes and posts one: a PostgreSQL advisory lock (every replica);
        SQLite serves one process, which holds its own lock around this."""
        if self.engine.dialect.name != "postgresql":
            yield
            return
        with self.engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(hashtext(:t))"), {"t": target_id})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(hashtext(:t))"), {"t": target_id})
                conn.commit()

    @contextmanager
    def principal_lock(self, arn: str) -> Iterator[None]:
        """Held while one principal's revocation policy is read, merged and written back:
        two incidents on one role must never overwrite each other's statement. A lock in
        this process, and on PostgreSQL an advisory lock every replica sees (SQLite serves
        one process)."""
        with self._principal_locks[arn]:
            if self.engine.dialect.name != "postgresql":
                yield
                return
            key = "cordon-principal:" + arn
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": key})
                conn.commit()
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
                    conn.commit()

    def plan_posted(self, incident_id: str) -> None:
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is not None and (inc.facts or {}).get("plan") == "pending":
                inc.facts = {**(inc.facts or {}), "plan": "posted"}

    def delete_incident(self, incident_id: str) -> None:
        """Only for a request whose card could not be posted: nobody ever saw it."""
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is not None and inc.status == PENDING and inc.card_ts is None:
                s.delete(inc)

    # decisions ---------------------------------------------------------------------

    def decide(self, incident_id: str, user_id: str, approve: bool) -> bool:
        """pending → approved/denied, once. False when someone else decided first or
        the request expired."""
        now = utcnow()
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.status == PENDING,
                       Incident.expires_at > now)
                .values(status=APPROVED if approve else DENIED, decided_by=user_id,
                        decided_at=now)
            )
            won = _won(result)
            s.add(Decision(incident_id=incident_id, user_id=user_id,
                           action="approve" if approve else "deny",
                           outcome="accepted" if won else "too late", at=now))
            if won:
                self._add_messages(s, incident_id, [(CARD, {})])
        return won

    def vote(self, incident_id: str, user_id: str) -> tuple[bool, bool, list[str]]:
        """Count this person's approval once; when enough distinct approvers agree,
        pending → approved (once). Returns (approved now, counted now, approvers)."""
        now = utcnow()
        with self.session() as s:
            inc = s.get(Incident, incident_id)
            if inc is None or inc.status != PENDING or inc.expires_at <= now:
                return False, False, self.votes(incident_id)
            required = inc.approvals_required
        try:
            with self.session() as s:
                s.add(ApprovalVote(incident_id=incident_id, user_id=user_id, at=now))
            outcome = "counted"
        except IntegrityError:
            outcome = "already counted"
        voters = self.votes(incident_id)
        with self.session() as s:
            won = False
            if len(voters) >= required:
                result = s.execute(
                    update(Incident)
                    .where(Incident.id == incident_id, Incident.status == PENDING,
                           Incident.expires_at > now)
                    .values(status=APPROVED, decided_by=user_id, decided_at=now))
                won = _won(result)
            s.add(Decision(incident_id=incident_id, user_id=user_id, action="approve",
                           outcome="accepted" if won else outcome))
            if won or outcome == "counted":
                self._add_messages(s, incident_id, [(CARD, {})])
        return won, outcome == "counted", voters

    def votes(self, incident_id: str) -> list[str]:
        with self.session() as s:
            return list(s.scalars(select(ApprovalVote.user_id)
                                  .where(ApprovalVote.incident_id == incident_id)
                                  .order_by(ApprovalVote.id)))

    def record_refusal(self, incident_id: str, user_id: str, action: str, why: str) -> None:
        with self.session() as s:
            s.add(Decision(incident_id=incident_id, user_id=user_id, action=action,
                           outcome=why[:64]))

    def decisions(self, incident_id: str) -> list[Decision]:
        with self.session() as s:
            return list(s.scalars(select(Decision).where(Decision.incident_id == incident_id)
                                  .order_by(Decision.id)))

    def expire_due(self, messages: Sequence[Message] = ()) -> list[str]:
        now = utcnow()
        with self.session() as s:
            due = list(s.scalars(select(Incident.id).where(
                Incident.status == PENDING, Incident.expires_at <= now)))
        expired = []
        for incident_id in due:
            with self.session() as s:
                result = s.execute(update(Incident).where(
                    Incident.id == incident_id, Incident.status == PENDING
                ).values(status=EXPIRED, finished_at=now))
                if _won(result):
                    expired.append(incident_id)
                    self._add_messages(s, incident_id, [*messages, (CARD, {})])
        return expired

    def retry(self, incident_id: str, user_id: str, messages: Sequence[Message] = ()) -> bool:
        """failed / partially contained → approved, once; finished steps stay done."""
        release = aliased(Incident)
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.status.in_(RETRYABLE),
                       # Containment and undo never act on the instance at once.
                       ~exists(select(release.id).where(release.parent_id == incident_id,
                                                        release.status.in_(OPEN_STATES))))
                .values(status=APPROVED, finished_at=None, summary="")
            )
            won = _won(result)
            s.add(Decision(incident_id=incident_id, user_id=user_id, action="retry",
                           outcome="accepted" if won else "not retryable"))
            if won:
                self._add_messages(s, incident_id, [*messages, (CARD, {})])
        return won

    def set_status(self, incident_id: str, status: str, expect: tuple[str, ...]) -> bool:
        with self.session() as s:
            result = s.execute(update(Incident).where(
                Incident.id == incident_id, Incident.status.in_(expect)).values(status=status))
            return _won(result)

    def latest_containment(self, target_id: str) -> Incident | None:
        with self.session() as s:
            return s.scalars(
                select(Incident)
                .where(Incident.target_id == target_id, Incident.kind != "release")
                .order_by(Incident.created_at.desc())
            ).first()

    def open_release_for(self, parent_id: str) -> Incident | None:
        with self.session() as s:
            return s.scalars(select(Incident).where(
                Incident.parent_id == parent_id, Incident.status.in_(OPEN_STATES))).first()

    # evidence ----------------------------------------------------------------------

    def evidence(self, incident_id: str) -> list[Evidence]:
        with self.session() as s:
            return list(s.scalars(select(Evidence).where(Evidence.incident_id == incident_id)
                                  .order_by(Evidence.id)))

    def evidence_by_id(self, evidence_id: int) -> Evidence | None:
        with self.session() as s:
            return s.get(Evidence, evidence_id)

    # follow-ups --------------------------------------------------------------------

    def snapshots_to_follow(self) -> list[tuple[Incident, StepRecord]]:
        with self.session() as s:
            rows = s.execute(
                select(Incident, StepRecord)
                .join(StepRecord, StepRecord.incident_id == Incident.id)
                .where(StepRecord.name == "snapshot-volumes",
                       StepRecord.status == StepStatus.SUCCEEDED,
                       Incident.snapshots_reported_at.is_(None))
            ).all()
            return [(inc, step) for inc, step in rows]

    def claim_snapshot_report(self, incident_id: str) -> bool:
        with self.session() as s:
            result = s.execute(update(Incident).where(
                Incident.id == incident_id, Incident.snapshots_reported_at.is_(None)
            ).values(snapshots_reported_at=utcnow()))
            return _won(result)

    # runs --------------------------------------------------------------------------

    def _now(self, plus_seconds: float = 0) -> ColumnElement[datetime]:
        """Now, by the database's clock on PostgreSQL (replicas on several hosts compare
        leases by one clock); SQLite lives on one host, whose clock it is."""
        if self.engine.dialect.name == "postgresql":
            now: ColumnElement[datetime] = func.timezone("UTC", func.clock_timestamp(),
                                                         type_=DateTime())
            return now + timedelta(seconds=plus_seconds) if plus_seconds else now
        return literal(utcnow() + timedelta(seconds=plus_seconds), DateTime())

    def _claimable(self, dead_owners: tuple[str, ...] = ()) -> ColumnElement[bool]:
        """Approved and not started, or running under a lease that lapsed or whose owner
        is known to be dead; never a containment while its release runs, nor a release
        while its containment runs."""
        other = aliased(Incident)
        lapsed = (Incident.status == RUNNING) & (Incident.lease_until < self._now())
        if dead_owners:
            lapsed = lapsed | ((Incident.status == RUNNING)
                               & Incident.lease_owner.in_(dead_owners))
        busy_release = exists(select(other.id).where(other.parent_id == Incident.id,
                                                     other.status.in_((APPROVED, RUNNING))))
        busy_parent = exists(select(other.id).where(other.id == Incident.parent_id,
                                                    other.status.in_(OPEN_STATES)))
        return or_(Incident.status == APPROVED, lapsed) & ~busy_release & ~busy_parent

    def claim_run(self, incident_id: str, owner: str, lease_seconds: float,
                  dead_owners: tuple[str, ...] = (),
                  messages: Sequence[Message] = ()) -> bool:
        """Take the right to run: approved, or running under a lease that lapsed (or
        whose owner is dead). Exactly one worker wins."""
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, self._claimable(dead_owners))
                .values(status=RUNNING, lease_owner=owner,
                        lease_until=self._now(lease_seconds))
            )
            won = _won(result)
            if won:
                s.execute(update(Incident).where(Incident.id == incident_id,
                                                 Incident.started_at.is_(None))
                          .values(started_at=utcnow()))
                self._add_messages(s, incident_id, messages)
            return won

    def renew_lease(self, incident_id: str, owner: str, lease_seconds: float) -> bool:
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.lease_owner == owner,
                       Incident.status == RUNNING)
                .values(lease_until=self._now(lease_seconds))
            )
            return _won(result)

    def finish_run(self, incident_id: str, owner: str, status: str, summary: str,
                   messages: Sequence[Message] = ()) -> bool:
        """Only while `owner` holds the run; its final messages in the same transaction."""
        with self.session() as s:
            result = s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.lease_owner == owner,
                       Incident.status == RUNNING)
                .values(status=status, summary=summary, finished_at=utcnow(),
                        lease_owner=None, lease_until=None)
            )
            won = _won(result)
            if won:
                self._add_messages(s, incident_id, messages)
            return won

    @staticmethod
    def transient(row: Any, **changes: Any) -> Any:
        """A detached copy of a row with some values changed: what it will be once a
        write lands (to render the message written in that same transaction)."""
        copy = type(row)(**{c.key: getattr(row, c.key) for c in row.__table__.columns})
        for key, value in changes.items():
            setattr(copy, key, value)
        return copy

    def running_owners(self) -> dict[str, str]:
        """Running incidents and the worker that holds each."""
        with self.session() as s:
            return {i: o or "" for i, o in s.execute(
                select(Incident.id, Incident.lease_owner).where(Incident.status == RUNNING))}

    def runs_to_resume(self, dead_owners: tuple[str, ...] = ()) -> list[str]:
        """Approved runs nobody started, and running ones whose worker stopped."""
        with self.session() as s:
            return list(s.scalars(select(Incident.id).where(self._claimable(dead_owners))
                                  .order_by(Incident.decided_at)))

    # steps -------------------------------------------------------------------------

    def ensure_steps(self, incident_id: str, names: list[str]) -> list[StepRecord]:
        with self.session() as s:
            existing = {r.name: r for r in s.scalars(
                select(StepRecord).where(StepRecord.incident_id == incident_id))}
            for position, name in enumerate(names):
                if name not in existing:
                    rec = StepRecord(incident_id=incident_id, position=position, name=name)
                    s.add(rec)
                    existing[name] = rec
        return self.steps(incident_id)

    def steps(self, incident_id: str) -> list[StepRecord]:
        with self.session() as s:
            return list(s.scalars(select(StepRecord).where(StepRecord.incident_id == incident_id)
                                  .order_by(StepRecord.position)))

    def update_step(self, step_id: int, owner: str | None = None, **values: Any) -> bool:
        """With `owner`, only while that worker holds the run's lease: False otherwise,
        and nothing is written."""
        if owner is not None:
            return self.update_steps(owner, {step_id: values})
        with self.session() as s:
            return _won(s.execute(update(StepRecord).where(StepRecord.id == step_id)
                                  .values(**values)))

    def update_steps(self, owner: str, values: dict[int, dict[str, Any]]) -> bool:
        """Several steps' records in one transaction (a run's hot path writes once), only
        while `owner` holds the run: False otherwise, and nothing is written."""
        try:
            with self.session() as s:
                for step_id, row in values.items():
                    query = update(StepRecord).where(StepRecord.id == step_id).where(exists(
                        select(Incident.id).where(Incident.id == StepRecord.incident_id,
                                                  Incident.lease_owner == owner,
                                                  Incident.status == RUNNING)))
                    if not _won(s.execute(query.values(**row))):
                        raise _Refused  # rolls the whole write back
        except _Refused:
            return False
        return True

    def finish_step(self, step_id: int, owner: str | None, incident_id: str,
                    values: dict[str, Any], messages: Sequence[Message] = (),
                    evidence: Sequence[tuple[str, str, bytes]] = (),
                    revocations: Sequence[dict[str, Any]] = ()) -> bool:
        """A step's record, its thread reply, its evidence files (name, media type,
        content) with their uploads, and its revocations: one transaction, written only
        while `owner` holds the run."""
        query = update(StepRecord).where(StepRecord.id == step_id)
        if owner is not None:
            query = query.where(exists(select(Incident.id).where(
                Incident.id == StepRecord.incident_id, Incident.lease_owner == owner,
                Incident.status == RUNNING)))
        with self.session() as s:
            result = s.execute(query.values(**values))
            won = _won(result)
            if not won:
                return False
            self._add_messages(s, incident_id, messages)
            step = values.get("name") or s.get(StepRecord, step_id).name  # type: ignore[union-attr]
            for name, media_type, content in evidence:
                row = Evidence(incident_id=incident_id, step=step, name=name,
                               media_type=media_type, content=content, size=len(content),
                               sha256=hashlib.sha256(content).hexdigest())
                s.add(row)
                s.flush()
                self._add_messages(s, incident_id, [(FILE, {"evidence_id": row.id})])
            for rec in revocations:
                s.add(Revocation(incident_id=incident_id, kind=rec["kind"],
                                 principal=rec["principal"], policy=rec["policy"],
                                 sid=rec.get("sid"), cutoff=rec["cutoff"],
                                 remove_after=datetime.strptime(rec["until"],
                                                                "%Y-%m-%dT%H:%M:%SZ")))
            return True

    # revocations --------------------------------------------------------------------

    def revocations(self, incident_id: str) -> list[Revocation]:
        with self.session() as s:
            return list(s.scalars(select(Revocation).where(Revocation.incident_id == incident_id)
                                  .order_by(Revocation.id)))

    def revocations_due(self, now: datetime | None = None) -> list[Revocation]:
        with self.session() as s:
            return list(s.scalars(select(Revocation).where(
                Revocation.removed_at.is_(None), Revocation.remove_after <= (now or utcnow()))
                .order_by(Revocation.remove_after)))

    def claim_revocation(self, revocation_id: int, note: str) -> bool:
        """Recorded as removed once, whichever replica's sweep removed it."""
        with self.session() as s:
            result = s.execute(update(Revocation).where(
                Revocation.id == revocation_id, Revocation.removed_at.is_(None)
            ).values(removed_at=utcnow(), note=note[:1000]))
            return _won(result)

    # outbox ------------------------------------------------------------------------

    def enqueue(self, incident_id: str, kind: str, payload: dict[str, Any]) -> int:
        with self.session() as s:
            msg = OutboxMessage(incident_id=incident_id, kind=kind, payload=payload)
            s.add(msg)
            s.flush()
            return msg.id

    def enqueue_many(self, incident_id: str, messages: Sequence[Message]) -> None:
        with self.session() as s:
            self._add_messages(s, incident_id, messages)

    @staticmethod
    def _add_messages(s: Session, incident_id: str, messages: Sequence[Message]) -> None:
        for kind, payload in messages:
            s.add(OutboxMessage(incident_id=incident_id, kind=kind, payload=payload))

    def unsent(self, incident_id: str | None = None, limit: int = 100) -> list[OutboxMessage]:
        with self.session() as s:
            q = select(OutboxMessage).where(OutboxMessage.sent_at.is_(None))
            if incident_id is not None:
                q = q.where(OutboxMessage.incident_id == incident_id)
            return list(s.scalars(q.order_by(OutboxMessage.id).limit(limit)))

    def claim_message(self, message_id: int, seconds: int = 30, owner: str = "") -> bool:
        """Take the right to send a message for a while, so that two senders (threads or
        replicas) never send it twice."""
        now = utcnow()
        with self.session() as s:
            result = s.execute(update(OutboxMessage).where(
                OutboxMessage.id == message_id, OutboxMessage.sent_at.is_(None),
                or_(OutboxMessage.claimed_until.is_(None), OutboxMessage.claimed_until < now),
            ).values(attempts=OutboxMessage.attempts + 1,
                     claimed_until=now + timedelta(seconds=seconds), claimed_by=owner or None))
            return _won(result)

    def claimants(self) -> set[str]:
        """Who holds a claim on an unsent message now."""
        with self.session() as s:
            return {c for c in s.scalars(select(OutboxMessage.claimed_by).distinct().where(
                OutboxMessage.sent_at.is_(None), OutboxMessage.claimed_by.is_not(None),
                OutboxMessage.claimed_until > utcnow())) if c}

    def release_claims(self, owners: Sequence[str]) -> int:
        """Release the claims of these (dead) senders: their messages are sent — after a
        look in the thread, since their send may have landed — without waiting for the
        claims to lapse."""
        if not owners:
            return 0
        with self.session() as s:
            result = s.execute(update(OutboxMessage).where(
                OutboxMessage.sent_at.is_(None), OutboxMessage.claimed_by.in_(list(owners))
            ).values(claimed_until=None))
            return int(getattr(result, "rowcount", 0) or 0)

    def mark_sent(self, message_id: int) -> bool:
        with self.session() as s:
            result = s.execute(update(OutboxMessage).where(
                OutboxMessage.id == message_id, OutboxMessage.sent_at.is_(None)
            ).values(sent_at=utcnow()))
            return _won(result)

    def mark_superseded(self, message_id: int) -> bool:
        """A card update that a later one of the same card replaces: never sent, and done
        with (`sent_at` closes it; `last_error` says it was not sent)."""
        with self.session() as s:
            result = s.execute(update(OutboxMessage).where(
                OutboxMessage.id == message_id, OutboxMessage.sent_at.is_(None)
            ).values(sent_at=utcnow(), last_error=SUPERSEDED))
            return _won(result)

    def mark_failed(self, message_id: int, error: str, retry_in: float = 0) -> None:
        """Not sent (or not known to be): tried again after `retry_in` seconds."""
        with self.session() as s:
            s.execute(update(OutboxMessage).where(OutboxMessage.id == message_id).values(
                last_error=error[:500],
                claimed_until=utcnow() + timedelta(seconds=retry_in) if retry_in else None))
