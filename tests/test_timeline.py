"""The thread is the incident's record: every message exactly once, in order, whatever
Slack does. The fake Slack can carry a call out and lose its answer (a 500 after
delivery), answer 429 with Retry-After, or refuse; the bot runs through its real HTTP
endpoint against moto's server."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bot.scheduler import sweep
from playbooks.models import CARD, THREAD, Incident, OutboxMessage
from playbooks.store import FINAL_STATES, Store
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, wait_for

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"


def contain(bot: RunningBot, world: sandbox_world.World, fault: Any = None) -> Any:
    """Request, wait for the card, then (fault injected now, after the card) approve."""
    assert bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")[0] == 200
    card = wait_for(lambda: bot.slack.fake.channel_messages(CHANNEL))[0]
    if fault is not None:
        fault()
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    return card


def drained(bot: RunningBot) -> Incident:
    """Once the run has ended, sweep until the outbox is empty (failed sends back off,
    then go again)."""
    wait_for(lambda: any(i.status in FINAL_STATES for i in bot.deps.store.recent()),
             timeout=60)

    def empty() -> bool:
        sweep(bot.deps)
        return not bot.deps.store.unsent()

    wait_for(empty, timeout=30, every=0.25)
    return bot.deps.store.recent()[0]


def texts(fake: FakeSlack, card_ts: str) -> list[str]:
    return [m.text for m in fake.thread(CHANNEL, card_ts)]


def test_a_message_slack_applied_but_whose_answer_was_lost_is_not_posted_again(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    card = contain(bot, world, lambda: fake_slack.fail_http(  # the first thread reply
        "chat.postMessage", 500, applied=True))
    incident = drained(bot)
    thread = texts(fake_slack, card.ts)
    assert thread[0].startswith("▶️ Approved by")
    assert [t for t, n in Counter(thread).items() if n > 1] == []
    assert thread[-1].startswith("🔒 *Contained*") and incident.status == "contained"
    # It was looked for (by the outbox id in its metadata) instead of being sent again.
    assert len(fake_slack.calls_to("conversations.replies")) >= 1
    posts = [c for c in fake_slack.calls_to("chat.postMessage") if c.get("thread_ts")]
    assert len(posts) == len(thread)


def test_every_reply_carries_its_outbox_id_in_its_metadata(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    card = contain(bot, world)
    drained(bot)
    ids = [(m.metadata or {}).get("event_payload", {}).get("outbox_id")
           for m in fake_slack.thread(CHANNEL, card.ts)]
    assert all(isinstance(i, int) for i in ids) and ids == sorted(ids)


def test_a_429_waits_for_retry_after_instead_of_hammering_slack(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    card = contain(bot, world, lambda: fake_slack.fail_http("chat.postMessage", 429,
                                                            retry_after=1))
    drained(bot)
    thread = texts(fake_slack, card.ts)
    assert [t for t, n in Counter(thread).items() if n > 1] == []
    posts = [c for c in fake_slack.calls_to("chat.postMessage") if c.get("thread_ts")]
    assert len(posts) == len(thread) + 1  # the refused one, once more, and no more


def test_an_api_refusal_is_retried_in_order_without_a_lookup(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    card = contain(bot, world, lambda: fake_slack.fail_next(
        "chat.postMessage", "service_unavailable", times=2))
    drained(bot)
    thread = texts(fake_slack, card.ts)
    assert thread[0].startswith("▶️ Approved by") and thread[-1].startswith("🔒 *Contained*")
    assert [t for t, n in Counter(thread).items() if n > 1] == []
    # Both refusals were retried: two more posts than the thread holds, no more.
    posts = [c for c in fake_slack.calls_to("chat.postMessage") if c.get("thread_ts")]
    assert len(posts) == len(thread) + 2
    assert fake_slack.calls_to("conversations.replies") == []  # surely not sent: no lookup


@pytest.fixture
def running(store: Store) -> Incident:
    inc = store.create_incident(ttl_seconds=60, kind="instance", target_id="i-0abc",
                                region="us-east-1", playbook="isolate", reason="r",
                                requester="U1", channel_id="C1", facts={})
    store.decide(inc.id, "U2", approve=True)
    assert store.claim_run(inc.id, "w:1:a:1", 30)
    return inc


def _outbox(store: Store, incident_id: str) -> list[tuple[str, dict[str, Any]]]:
    with store.session() as s:
        rows = s.query(OutboxMessage).filter(OutboxMessage.incident_id == incident_id)
        return [(r.kind, r.payload) for r in rows.order_by(OutboxMessage.id)]


def test_the_end_of_a_run_and_its_messages_are_one_write(store: Store, running: Incident
                                                         ) -> None:
    before = _outbox(store, running.id)
    final = [(THREAD, {"text": "🔒 done"}), (CARD, {})]
    # Someone else owns the run: neither the end nor its messages are written.
    assert not store.finish_run(running.id, "other:1:b:1", "contained", "x", final)
    assert _outbox(store, running.id) == before
    assert store.finish_run(running.id, "w:1:a:1", "contained", "x", final)
    assert _outbox(store, running.id) == [*before, *final]


def test_a_step_its_reply_and_its_evidence_are_one_write(store: Store, running: Incident
                                                         ) -> None:
    (step,) = store.ensure_steps(running.id, ["capture-evidence"])
    reply = [(THREAD, {"text": "✅ captured"})]
    assert not store.finish_step(step.id, "other:1:b:1", running.id, {"status": "succeeded"},
                                 reply, [("x.json", "application/json", b"{}")])
    assert store.evidence(running.id) == [] and store.steps(running.id)[0].status == "pending"
    assert store.finish_step(step.id, "w:1:a:1", running.id, {"status": "succeeded"}, reply,
                             [("x.json", "application/json", b"{}")])
    (kept,) = store.evidence(running.id)
    assert _outbox(store, running.id)[-2:] == [*reply, ("file", {"evidence_id": kept.id})]


# a click belongs to its card --------------------------------------------------------------


def _two_cards(bot: RunningBot, world: sandbox_world.World) -> tuple[Any, Any]:
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate one")
    bot.slack.command(DANA, "C0OTHER", f"{world.bystander_id} isolate two")
    first = wait_for(lambda: bot.slack.fake.channel_messages(CHANNEL))[0]
    second = wait_for(lambda: bot.slack.fake.channel_messages("C0OTHER"))[0]
    return first, second


def _incident_of(bot: RunningBot, card: Any) -> Incident:
    return wait_for(lambda: next((i for i in bot.deps.store.recent() if i.card_ts == card.ts),
                                 None))


@pytest.mark.parametrize("tamper", ["value", "channel", "team"])
def test_a_click_that_does_not_come_from_the_incidents_card_changes_nothing(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        tamper: str) -> None:
    import json

    first, second = _two_cards(bot, world)
    target = _incident_of(bot, second)
    value = json.dumps({"incident_id": target.id})
    if tamper == "value":  # Approve on card 1, its value changed to incident 2
        status, _ = bot.slack.click(LEE, CHANNEL, first.ts, "cordon_approve", value)
    elif tamper == "channel":  # claims incident 2's message, from another channel
        status, _ = bot.slack.click(LEE, CHANNEL, second.ts, "cordon_approve", value)
    else:  # incident 2's own card, clicked from another workspace
        bot.slack.team_id = "T0ELSEWHERE"
        status, _ = bot.slack.click(LEE, "C0OTHER", second.ts, "cordon_approve", value)
    assert status == 200  # acknowledged; the answer comes privately
    refused = wait_for(lambda: [d for d in bot.deps.store.decisions(target.id)
                                if d.outcome.startswith("refused")])
    assert refused[0].outcome == "refused: not this incident's card"
    assert bot.deps.store.get(target.id).status == "pending"  # type: ignore[union-attr]
    assert "does not belong" in wait_for(lambda: fake_slack.ephemerals_for(LEE))[-1]
    assert bot.deps.store.steps(target.id) == []  # nothing ran, nothing changed in AWS


def test_card_updates_waiting_for_one_card_are_sent_as_one(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    """Steps finishing one after another queue a card update each; while Slack is slow,
    they pile up, and one chat.update (the latest state) replaces them all."""
    assert bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")[0] == 200
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    (incident,) = wait_for(lambda: [i for i in bot.deps.store.recent() if i.card_ts])
    before = len(fake_slack.calls_to("chat.update"))
    for _ in range(5):
        bot.deps.store.enqueue(incident.id, CARD, {})
    bot.deps.store.enqueue(incident.id, THREAD, {"text": "between the updates"})
    bot.deps.store.enqueue(incident.id, CARD, {})
    assert bot.deps.timeline.flush(incident.id) == 2  # the note, and one card update
    assert len(fake_slack.calls_to("chat.update")) == before + 1
    assert bot.deps.store.unsent(incident.id) == []
    assert texts(fake_slack, card.ts)[-1] == "between the updates"
    # The five replaced updates are closed as superseded, not recorded as sent.
    from sqlalchemy import select

    from playbooks.models import SUPERSEDED, OutboxMessage

    with bot.deps.store.session() as s:
        closed = list(s.scalars(select(OutboxMessage.last_error).where(
            OutboxMessage.incident_id == incident.id, OutboxMessage.kind == CARD)))
    assert closed.count(SUPERSEDED) >= 5


def test_messages_claimed_by_a_dead_process_are_released_at_start(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    """A process killed while sending leaves its claim (30 s): its next life releases it
    at once, so the resumed run's thread does not stall; a live sender's claim stays."""
    from playbooks.runner import worker_host

    assert bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")[0] == 200
    (incident,) = wait_for(lambda: [i for i in bot.deps.store.recent() if i.card_ts])
    store = bot.deps.store
    dead = f"{worker_host()}:{_dead_pid()}:0ldb007"
    live = f"{worker_host()}:1:0ldb007"  # pid 1 runs (another start of another process)
    first = store.enqueue(incident.id, THREAD, {"text": "claimed by the dead"})
    second = store.enqueue(incident.id, THREAD, {"text": "claimed by the living"})
    assert store.claim_message(first, owner=dead) and store.claim_message(second, owner=live)
    assert not store.claim_message(first, owner="someone-else")
    bot.deps.worker.resume_interrupted()
    assert store.claim_message(first, owner="someone-else")  # released
    assert not store.claim_message(second, owner="someone-else")  # still held


def _dead_pid() -> int:
    """The pid of a process that has ended."""
    import subprocess

    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_message_queued_while_another_replica_sends_goes_out_in_that_flush(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    """Replica B queues a note while replica A is sending the one before: B's flush finds
    A's claim and stands aside; A's flush sends B's note too, without waiting for a
    sweep."""
    from bot.notifier import SlackTimeline

    assert bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")[0] == 200
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    (incident,) = wait_for(lambda: [i for i in bot.deps.store.recent() if i.card_ts])
    store = bot.deps.store
    replica_b = SlackTimeline(store, bot.deps.client)
    stood_aside: list[int] = []

    class WhileSending:
        """Replica A's Slack client: while its first post is on the wire, B queues and
        flushes."""

        def __getattr__(self, name: str) -> Any:
            return getattr(bot.deps.client, name)

        def chat_postMessage(self, **kwargs: Any) -> Any:
            if not stood_aside:
                store.enqueue(incident.id, THREAD, {"text": "queued by replica B"})
                stood_aside.append(replica_b.flush(incident.id))
            return bot.deps.client.chat_postMessage(**kwargs)

    replica_a = SlackTimeline(store, WhileSending())  # type: ignore[arg-type]
    try:
        store.enqueue(incident.id, THREAD, {"text": "queued by replica A"})
        assert replica_a.flush(incident.id) == 2
    finally:
        replica_a.close()
        replica_b.close()
    assert stood_aside == [0]
    assert texts(fake_slack, card.ts)[-2:] == ["queued by replica A", "queued by replica B"]
    assert store.unsent(incident.id) == []


def test_fleet_lines_waiting_together_go_as_one_reply_and_once_after_a_lost_answer(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    """Fifty instances end within seconds, and Slack takes about one message a second per
    channel: member lines queued together go as one reply; when that reply's answer is
    lost, none of its lines is posted again."""
    assert bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")[0] == 200
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    (incident,) = wait_for(lambda: [i for i in bot.deps.store.recent() if i.card_ts])
    store = bot.deps.store
    for n in range(3):
        store.enqueue(incident.id, THREAD, {"text": f"line {n}", "for_incident": incident.id})
        store.enqueue(incident.id, CARD, {})
    fake_slack.fail_http("chat.postMessage", 500, applied=True)
    bot.deps.timeline.flush(incident.id)
    wait_for(lambda: (sweep(bot.deps), not store.unsent(incident.id))[1], timeout=30,
             every=0.25)
    replies = [m for m in fake_slack.thread(CHANNEL, card.ts) if "line 0" in m.text]
    assert len(replies) == 1 and replies[0].text == "line 0\nline 1\nline 2"
    ids = (replies[0].metadata or {}).get("event_payload", {}).get("outbox_ids")
    assert ids is not None and len(ids) == 3
    assert sum(t.count("line ") for t in texts(fake_slack, card.ts)) == 3
