"""The store on SQLite and PostgreSQL: decisions and run claims happen once, however
many clicks, approvers or replicas race for them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import update

from playbooks.models import Incident, Watch, utcnow
from playbooks.store import APPROVED, DENIED, EXPIRED, PENDING, RUNNING, Store


def new_incident(store: Store, ttl: int = 1800, target: str = "i-0123456789abcdef0") -> Incident:
    return store.create_incident(ttl_seconds=ttl, kind="instance", target_id=target,
                                 region="us-east-1", account="123456789012",
                                 playbook="isolate", reason="r", requester="U0DANA",
                                 channel_id="C1", facts={"vpc_id": "vpc-1"})


def race(n: int, fn: Callable[[int], bool]) -> list[bool]:
    barrier = threading.Barrier(n)
    results: list[bool] = [False] * n

    def one(i: int) -> None:
        barrier.wait()
        results[i] = fn(i)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_a_decision_is_taken_once_among_racing_approvers(store: Store) -> None:
    inc = new_incident(store)
    results = race(8, lambda i: store.decide(inc.id, f"U{i}", approve=i % 2 == 0))
    assert results.count(True) == 1
    winner = results.index(True)
    got = store.get(inc.id)
    assert got is not None and got.decided_by == f"U{winner}"
    assert got.status == (APPROVED if winner % 2 == 0 else DENIED)
    outcomes = [d.outcome for d in store.decisions(inc.id)]
    assert outcomes.count("accepted") == 1 and outcomes.count("too late") == 7


def test_an_expired_request_cannot_be_approved(store: Store) -> None:
    inc = new_incident(store, ttl=0)
    assert store.decide(inc.id, "U1", approve=True) is False
    assert store.expire_due() == [inc.id]
    assert store.expire_due() == []
    got = store.get(inc.id)
    assert got is not None and got.status == EXPIRED


def test_only_one_worker_claims_a_run(store: Store) -> None:
    inc = new_incident(store)
    store.decide(inc.id, "U1", approve=True)
    results = race(6, lambda i: store.claim_run(inc.id, f"worker-{i}", 60))
    assert results.count(True) == 1
    got = store.get(inc.id)
    assert got is not None and got.status == RUNNING


def test_a_run_whose_worker_died_is_claimed_again_after_its_lease(store: Store) -> None:
    inc = new_incident(store)
    store.decide(inc.id, "U1", approve=True)
    assert store.claim_run(inc.id, "dead", 60)
    assert store.runs_to_resume() == []
    assert store.claim_run(inc.id, "other", 60) is False
    with store.session() as s:
        s.execute(update(Incident).where(Incident.id == inc.id)
                  .values(lease_until=utcnow() - timedelta(seconds=1)))
    assert store.runs_to_resume() == [inc.id]
    assert store.claim_run(inc.id, "other", 60)
    assert store.finish_run(inc.id, "dead", "contained", "") is False  # it lost the lease
    assert store.finish_run(inc.id, "other", "contained", "ok") is True


def test_a_pending_request_is_not_resumed(store: Store) -> None:
    inc = new_incident(store)
    assert store.claim_run(inc.id, "w", 60) is False
    got = store.get(inc.id)
    assert got is not None and got.status == PENDING


def test_outbox_messages_are_claimed_once(store: Store) -> None:
    inc = new_incident(store)
    msg_id = store.enqueue(inc.id, "thread", {"text": "hello"})
    (msg,) = store.unsent()
    results = race(4, lambda i: store.claim_message(msg.id))
    assert results.count(True) == 1
    assert store.mark_sent(msg_id) and store.unsent() == []


def test_step_records_keep_captured_state_as_json(store: Store) -> None:
    inc = new_incident(store)
    (rec,) = store.ensure_steps(inc.id, ["isolate-security-groups"])
    captured = {"enis": [{"id": "eni-1", "groups": [{"id": "sg-1", "name": "web"}]}]}
    store.update_step(rec.id, captured=captured)
    again = store.ensure_steps(inc.id, ["isolate-security-groups"])
    assert len(again) == 1 and again[0].captured == captured


def test_wide_approvals_count_distinct_people_once_and_expire(store: Store) -> None:
    import pytest

    from playbooks.errors import AlreadyDecided, RequestExpired
    from playbooks.service import Cordon

    cordon = Cordon(store, clients_for=lambda *a, **k: None, regions=["us-east-1"],
                    approval_ttl_seconds=600)
    inc = store.create_incident(ttl_seconds=600, approvals_required=2, kind="instance",
                                target_id="i-0123456789abcdef0", region="us-east-1",
                                playbook="nacl", requester="U0DANA", channel_id="C1")
    assert cordon.decide(inc.id, "U1", approve=True).status == PENDING
    with pytest.raises(AlreadyDecided, match="already counted"):
        cordon.decide(inc.id, "U1", approve=True)
    assert store.votes(inc.id) == ["U1"]
    # Its time runs out (set in the database, not waited for: a busy machine is slow).
    with store.session() as s:
        s.execute(update(Incident).where(Incident.id == inc.id)
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(RequestExpired):
        cordon.decide(inc.id, "U1", approve=True)
    with pytest.raises(RequestExpired):
        cordon.decide(inc.id, "U2", approve=True)
    assert store.votes(inc.id) == ["U1"]


def test_two_approvers_at_once_approve_a_wide_request_once(store: Store) -> None:
    inc = store.create_incident(ttl_seconds=600, approvals_required=2, kind="instance",
                                target_id="i-0123456789abcdef0", region="us-east-1",
                                playbook="nacl", requester="U0DANA", channel_id="C1")
    assert store.vote(inc.id, "U0")[0] is False
    results = race(4, lambda i: store.vote(inc.id, f"U{i + 1}")[0])
    assert results.count(True) == 1
    got = store.get(inc.id)
    assert got is not None and got.status == APPROVED


def test_a_batch_of_step_writes_is_all_or_nothing_and_only_for_the_owner(store: Store) -> None:
    inc = new_incident(store)
    other = new_incident(store, target="i-0fedcba9876543210")
    store.decide(inc.id, "U1", approve=True)
    assert store.claim_run(inc.id, "w1", 60)
    a, b = store.ensure_steps(inc.id, ["protect-evidence", "isolate-security-groups"])
    (c,) = store.ensure_steps(other.id, ["isolate-security-groups"])
    rows = {a.id: {"status": "running", "captured": {"x": 1}}, b.id: {"status": "running"}}
    assert store.update_steps("w2", rows) is False  # not the owner: nothing written
    assert {s.status for s in store.steps(inc.id)} == {"pending"}
    # One row of another run (not owned by w1) refuses the whole write.
    assert store.update_steps("w1", {**rows, c.id: {"status": "running"}}) is False
    assert {s.status for s in store.steps(inc.id)} == {"pending"}
    assert store.update_steps("w1", rows) is True
    got = {s.name: s for s in store.steps(inc.id)}
    assert got["protect-evidence"].captured == {"x": 1}
    assert {s.status for s in got.values()} == {"running"}


def test_a_watch_is_made_once_and_checked_by_one_claimer_at_a_time(store: Store) -> None:
    inc = new_incident(store)
    cut = utcnow()
    subjects = [{"attribute": "Username", "value": inc.target_id}]
    failures: list[Exception] = []

    def start(_: int) -> bool:
        try:
            return store.start_watch(inc.id, subjects, ["us-east-1"], cut, 30)
        except Exception as exc:  # a loser of the race must be told, not fail
            failures.append(exc)
            return False

    assert race(4, start).count(True) == 1 and failures == []
    claims: list[list[Watch]] = [[] for _ in range(4)]

    def claim(i: int) -> bool:
        claims[i] = list(store.claim_due_watches())
        return bool(claims[i])

    assert race(4, claim).count(True) == 1
    (watch,) = next(c for c in claims if c)
    assert store.watch_checked(watch, seen=["ev-1"], found=1, errors={},
                               next_check_at=utcnow() + timedelta(minutes=1), finished=False,
                               messages=[("thread", {"text": "1 new event"})])
    # The same claim cannot record twice: its check is recorded, its message queued once.
    assert not store.watch_checked(watch, seen=["ev-1"], found=1, errors={},
                                   next_check_at=utcnow(), finished=True, messages=[])
    after = store.watch(inc.id)
    assert after is not None and (after.events, after.seen, after.finished_at) == (1, ["ev-1"],
                                                                                  None)
    assert [m.payload["text"] for m in store.unsent(inc.id)] == ["1 new event"]
    assert store.claim_due_watches() == []  # not due for a minute
