"""The HTTP endpoint is a production server: honest health (503 with the reason when
the database cannot take a write), 400 for malformed requests, nothing changed."""

from __future__ import annotations

import http.client
import json
import socket
import sqlite3
import threading
from typing import Any

from sqlalchemy import create_engine, text

from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, start_bot, wait_for
from tests.conftest import settle


def get_health(bot: RunningBot) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", bot.server.port, timeout=30)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


def raw(bot: RunningBot, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", bot.server.port), timeout=10) as s:
        s.sendall(request)
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks):
                break
        return b"".join(chunks)


def test_health_says_ok_when_the_database_takes_a_write(bot: RunningBot) -> None:
    assert get_health(bot) == (200, {"ok": True, "database": "takes writes"})


def test_health_is_503_with_the_reason_while_the_database_is_locked(
        fake_slack: FakeSlack, world: sandbox_world.World, database_url: str) -> None:
    bot = start_bot(fake_slack, database_url)
    try:
        _locked_health(bot, database_url)
    finally:
        bot.stop()


def _locked_health(bot: RunningBot, database_url: str) -> None:
    release = threading.Event()
    locked = threading.Event()

    def hold_lock() -> None:
        if database_url.startswith("sqlite"):
            conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=1)
            conn.execute("BEGIN EXCLUSIVE")
            locked.set()
            release.wait(30)
            conn.rollback()
            conn.close()
            return
        engine = create_engine(database_url)
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE incidents IN ACCESS EXCLUSIVE MODE"))
            locked.set()
            release.wait(30)
            conn.rollback()
        engine.dispose()

    holder = threading.Thread(target=hold_lock)
    holder.start()
    try:
        assert locked.wait(10)
        status, body = get_health(bot)
        assert status == 503 and body["ok"] is False
        assert "cannot take a write" in body["database"]
    finally:
        release.set()
        holder.join()
    assert get_health(bot)[0] == 200  # and healthy again once the lock is gone


def test_malformed_requests_get_a_400_and_change_nothing(bot: RunningBot) -> None:
    bad_utf8 = b"payload=\xff\xfe"
    answer = raw(bot, b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Type: "
                      b"application/x-www-form-urlencoded\r\nContent-Length: "
                      + str(len(bad_utf8)).encode() + b"\r\n\r\n" + bad_utf8)
    assert answer.startswith(b"HTTP/1.1 400")
    answer = raw(bot, b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")
    # Unsigned: Bolt refuses it.
    answer = raw(bot, b"POST /slack/events HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
    assert answer.startswith(b"HTTP/1.1 401")
    assert bot.deps.store.recent() == []
    # The server is still there.
    assert get_health(bot)[0] == 200


def test_requests_are_acked_while_slacks_web_api_is_down(
        tmp_path: Any, world: sandbox_world.World) -> None:
    """Bolt would call auth.test before each request's listeners and answer 500 while
    Slack's Web API is unreachable; Cordon's authorize never goes to the network."""
    fake = FakeSlack().start()
    bot = start_bot(fake, f"sqlite:///{tmp_path}/cordon.db")
    fake.stop()  # Slack's Web API is gone; its signed requests still arrive
    try:
        status, body = bot.slack.command("U0DANA", "C1", f"{world.instance_id} isolate x")
        assert status == 200 and "Looking up" in body
        status, body = bot.slack.command("U0DANA", "C1", "help")
        assert status == 200 and "/contain" in body
    finally:
        bot.stop()


def test_a_card_slack_did_not_take_goes_out_when_slack_answers_and_can_be_approved(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    """Slack's Web API answers 503 to the card and to the outbox's first retry: the
    request is kept, the card posted once Slack answers, and an approver runs it."""
    fake_slack.fail_http("chat.postMessage", 503, times=2)
    status, _ = bot.slack.command("U0DANA", "C0INCIDENT", f"{world.instance_id} isolate shell")
    assert status == 200
    # Posted, and recorded as the card (the record follows Slack's answer).
    (incident,) = wait_for(lambda: [i for i in bot.deps.store.recent() if i.card_ts],
                           timeout=60)
    (card,) = fake_slack.channel_messages("C0INCIDENT")
    assert incident.card_ts == card.ts and incident.status == "pending"
    bot.slack.click_button("U0LEE", "C0INCIDENT", card.ts, "Approve")
    assert settle(bot, incident.id).status == "contained"
    assert len(fake_slack.channel_messages("C0INCIDENT")) == 1


def test_a_queued_card_whose_card_went_out_another_way_is_closed_and_its_thread_goes_on(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    """A card queued while Slack was down, posted meanwhile by another path (a later
    finding about the same instance): the queued one is closed, never posted a second
    time, and what follows it in the thread is not held behind it."""
    from playbooks.models import POST_CARD, THREAD

    assert bot.slack.command("U0DANA", "C0INCIDENT", f"{world.instance_id} isolate x")[0] == 200
    (incident,) = wait_for(lambda: [i for i in bot.deps.store.recent() if i.card_ts],
                           timeout=60)
    (card,) = fake_slack.channel_messages("C0INCIDENT")
    wait_for(lambda: not bot.deps.store.unsent(), timeout=30)
    bot.deps.store.enqueue(incident.id, POST_CARD, {"team_id": ""})
    bot.deps.store.enqueue(incident.id, THREAD, {"text": "a note after it"})
    bot.deps.timeline.flush(incident.id)
    assert bot.deps.store.unsent() == []
    assert [m.text for m in fake_slack.thread("C0INCIDENT", card.ts)][-1] == "a note after it"
    assert len(fake_slack.channel_messages("C0INCIDENT")) == 1
