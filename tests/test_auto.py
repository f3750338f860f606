"""Opt-in automatic containment, through the real intake on moto's SQS: a finding that
matches a CORDON_AUTO_CONTAIN rule is isolated with no click (judged by the instance's
groups in moto), its card offers Keep and Release to approvers, an unreviewed one is
reminded in the channel, and a released one is not contained again by an update of the
same finding."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from bot.scheduler import sweep
from bot.text import escape
from playbooks.auto import parse_rule
from playbooks.findings import parse_event
from playbooks.models import Incident
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, start_bot, wait_for
from tests.conftest import FINDINGS, AwsTrace, settle, settle_card
from tests.test_intake import _handled, cards, guardduty, send, text_of
from tests.test_metrics import one, scrape

LEE, KIM, DANA = "U0LEE", "U0KIM", "U0DANA"
RULE = "guardduty:>=8:isolate"


@pytest.fixture
def auto_bot(fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
             aws_trace: AwsTrace, queue: str) -> Iterator[RunningBot]:
    running = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                        session_factory=aws_trace.session, CORDON_FINDINGS_QUEUE_URL=queue,
                        CORDON_FINDINGS_CHANNEL=FINDINGS,
                        CORDON_AUTO_CONTAIN=f"{RULE},guardduty:CryptoCurrency:EC2/*:isolate")
    yield running
    running.stop()
    assert aws_trace.undeclared() == []


def sealed_everywhere(instance_id: str) -> bool:
    return all(groups == [g for g in groups if g.startswith("cordon-sealed ")] and groups
               for groups in sandbox_world.groups_by_eni(instance_id).values())


def buttons(card: Any) -> list[str]:
    return [el["text"]["text"] for block in card.blocks for el in block.get("elements", [])
            if el.get("type") == "button"]


def only_proposed(bot: RunningBot, card: Any, world: sandbox_world.World,
                  before: dict[str, list[str]]) -> None:
    """The card waits for a person (pending, `full`, no rule, Approve and Deny), and the
    instance is untouched."""
    incident = next(i for i in bot.deps.store.recent() if i.card_ts == card.ts)
    assert (incident.status, incident.playbook, incident.auto_rule) == ("pending", "full", None)
    assert buttons(bot.slack.fake.message(FINDINGS, card.ts)) == ["Approve", "Deny"]
    assert sandbox_world.groups_by_eni(world.instance_id) == before


def test_a_matching_finding_is_isolated_with_no_click_and_offers_keep_and_release(
        auto_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    before = sandbox_world.groups_by_eni(world.instance_id)
    send(queue, guardduty(world.instance_id, severity=8.5))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    incident = settle_card(auto_bot, card.ts)
    # Judged by moto: every ENI is on the sealed group, and nobody clicked anything.
    assert incident.status == "contained", incident.summary
    assert sealed_everywhere(world.instance_id) and before != sandbox_world.groups_by_eni(
        world.instance_id)
    assert (incident.playbook, incident.auto_rule, incident.decided_by) == (
        "isolate", RULE, "cordon-auto")
    decisions = [(d.user_id, d.action, d.outcome)
                 for d in auto_bot.deps.store.decisions(incident.id)]
    assert decisions == [("cordon-auto", "approve", f"rule {RULE}")]
    # The network cut only: no snapshot, no image, the role left for a person's Keep.
    steps = {s.name for s in auto_bot.deps.store.steps(incident.id)}
    assert "isolate-security-groups" in steps and not steps & {
        "snapshot-volumes", "create-image", "remove-instance-profile"}
    card = fake_slack.message(FINDINGS, card.ts)
    shown = text_of(card.blocks)
    assert "Isolated automatically" in shown and "Contained automatically" in shown
    assert escape(RULE) in shown
    assert buttons(card) == ["Keep", "Release"]
    m = scrape(auto_bot)
    assert one(m, "cordon_auto_contained_total", rule=RULE) == 1
    assert one(m, "cordon_incidents_total", playbook="isolate", source="GuardDuty",
               status="contained") == 1
    assert one(m, "cordon_time_to_contain_seconds_count", playbook="isolate",
               source="GuardDuty") == 1
    assert m["cordon_intake_lag_seconds"][()] >= 0

    # Keep: refused to someone who is not an approver (nothing changes), then an approver
    # goes on with `full` — a new card, approved by them, that runs the rest.
    auto_bot.slack.click_button(DANA, FINDINGS, card.ts, "Keep")
    assert "not authorised" in wait_for(lambda: fake_slack.ephemerals_for(DANA))[0]
    assert auto_bot.deps.store.get(incident.id).reviewed_at is None
    # Two approvers press Keep at once: one `full` runs.
    clicks = [threading.Thread(target=auto_bot.slack.click_button,
                               args=(who, FINDINGS, card.ts, "Keep")) for who in (LEE, KIM)]
    for t in clicks:
        t.start()
    for t in clicks:
        t.join()
    follow_card = wait_for(lambda: cards(fake_slack)[1:], timeout=30)[0]
    follow = settle_card(auto_bot, follow_card.ts, timeout=90)
    assert (follow.playbook, follow.status) == ("full", "contained")
    assert follow.decided_by in (LEE, KIM)
    wait_for(lambda: len(auto_bot.deps.store.decisions(incident.id)) == 4)
    assert len(cards(fake_slack)) == 2
    assert follow.facts["kept_from"] == incident.id
    follow_steps = {s.name: s.status for s in auto_bot.deps.store.steps(follow.id)}
    assert follow_steps["snapshot-volumes"] == "succeeded"
    assert follow_steps["isolate-security-groups"] in ("skipped", "succeeded")
    kept = auto_bot.deps.store.get(incident.id)
    assert kept.reviewed_at is not None
    assert sorted((d.action, d.outcome) for d in auto_bot.deps.store.decisions(incident.id)
                  ) == [("approve", f"rule {RULE}"), ("keep", "accepted"),
                        ("keep", "already reviewed"), ("keep", "refused: not an approver")]
    wait_for(lambda: buttons(fake_slack.message(FINDINGS, card.ts)) == [])
    assert any("kept this automatic containment" in m.text
               for m in fake_slack.thread(FINDINGS, card.ts))


def test_a_finding_that_matches_no_rule_only_proposes(
        auto_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    before = sandbox_world.groups_by_eni(world.instance_id)
    send(queue, guardduty(world.instance_id, severity=5))  # Backdoor:…, below 8
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    _handled(auto_bot, queue)
    assert len(auto_bot.deps.store.recent()) == 1
    only_proposed(auto_bot, card, world, before)


def test_a_released_automatic_containment_is_not_contained_again_by_an_update(
        auto_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    before = sandbox_world.groups_by_eni(world.instance_id)
    send(queue, guardduty(world.instance_id, severity=8.5, count=3))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    incident = settle_card(auto_bot, card.ts)
    assert sealed_everywhere(world.instance_id)
    auto_bot.slack.click_button(LEE, FINDINGS, card.ts, "Release")
    release_card = wait_for(lambda: cards(fake_slack)[1:], timeout=30)[0]
    release = settle_card(auto_bot, release_card.ts)
    assert release.status == "released" and release.decided_by == LEE
    assert sandbox_world.groups_by_eni(world.instance_id) == before
    assert auto_bot.deps.store.get(incident.id).status == "released"

    # GuardDuty updates the same finding (its count grows): nothing runs again.
    send(queue, guardduty(world.instance_id, severity=8.5, count=9))
    _handled(auto_bot, queue)
    assert sandbox_world.groups_by_eni(world.instance_id) == before
    assert len(cards(fake_slack)) == 2
    # Its severity rises: a person is asked, the rule does not fire again.
    send(queue, guardduty(world.instance_id, severity=9, count=12))
    third = wait_for(lambda: cards(fake_slack)[2:], timeout=30)[0]
    _handled(auto_bot, queue)
    only_proposed(auto_bot, third, world, before)


def test_an_automatic_containment_nobody_reviewed_is_reminded_once(
        auto_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    send(queue, guardduty(world.instance_id, severity=8))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    incident = settle_card(auto_bot, card.ts)
    sweep(auto_bot.deps)  # too early: the sweep writes no reminder (it would mark it here)
    assert auto_bot.deps.store.get(incident.id).reminded_at is None
    assert not [m for m in fake_slack.thread(FINDINGS, card.ts) if m.broadcast]
    # Sixteen minutes later, as the database sees it.
    with auto_bot.deps.store.session() as s:
        s.execute(update(Incident).where(Incident.id == incident.id).values(
            decided_at=Incident.decided_at - timedelta(minutes=16)))
    sweep(auto_bot.deps)
    sweep(auto_bot.deps)
    settle(auto_bot, incident.id)
    reminders = [m for m in fake_slack.thread(FINDINGS, card.ts) if m.broadcast]
    assert len(reminders) == 1 and "nobody has reviewed it" in reminders[0].text
    assert auto_bot.deps.store.get(incident.id).reminded_at is not None


def test_rules_match_as_written() -> None:
    (crypto,) = parse_event(json.dumps({**guardduty("i-0123456789abcdef0", severity=5)}))
    crypto = type(crypto)(**{**crypto.facts(), "type": "CryptoCurrency:EC2/BitcoinTool.B!DNS"})
    assert parse_rule("guardduty:CryptoCurrency:EC2/*:isolate").matches(crypto)
    assert not parse_rule("guardduty:>=8:isolate").matches(crypto)
    assert parse_rule("guardduty:>4.9:isolate").matches(crypto)
    assert not parse_rule("guardduty:>5:isolate").matches(crypto)
    assert not parse_rule("securityhub:*:isolate").matches(crypto)
    sample = type(crypto)(**{**crypto.facts(), "sample": True})
    assert not parse_rule("guardduty:*:isolate").matches(sample)
    for bad, why in (("guardduty:>=8:full", "the action must be isolate"),
                     ("inspector:>=8:isolate", "the source must be one of"),
                     ("guardduty::isolate", "say what matches"),
                     ("guardduty:<=3:isolate", "written >=N or >N"),
                     ("guardduty:>=11:isolate", "between 0 and 10")):
        with pytest.raises(ValueError, match=why):
            parse_rule(bad)
