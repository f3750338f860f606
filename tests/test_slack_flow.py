"""End to end through the bot's real HTTP endpoint with signed requests, a fake Slack
Web API over HTTP, moto's server, and the database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bot.scheduler import sweep
from playbooks.models import Incident
from playbooks.store import FINAL_STATES
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack, Message
from sandbox.harness import RunningBot, wait_for
from tests.conftest import AwsTrace, aws_client, settle

CHANNEL = "C0INCIDENT"
DANA, LEE, KIM, SAM, ALEX = "U0DANA", "U0LEE", "U0KIM", "U0SAM", "U0ALEX"


def card_of(fake: FakeSlack) -> Message:
    return wait_for(lambda: fake.channel_messages(CHANNEL))[0]  # type: ignore[no-any-return]


def card_text(msg: Message) -> str:
    parts = []
    for block in msg.blocks:
        if block.get("text"):
            parts.append(block["text"]["text"] if isinstance(block["text"], dict)
                         else block["text"])
        parts.extend(f["text"] for f in block.get("fields", []))
        parts.extend(e.get("text", {}).get("text", "") if isinstance(e.get("text"), dict)
                     else e.get("text", "") for e in block.get("elements", []))
    return "\n".join(parts)


def buttons(msg: Message) -> list[str]:
    return [e["text"]["text"] for b in msg.blocks for e in b.get("elements", [])
            if e.get("type") == "button"]


def only_incident(bot: RunningBot) -> Incident:
    (incident,) = bot.deps.store.recent()
    return incident


def finished(bot: RunningBot) -> Incident:
    incident: Incident = wait_for(lambda: next(
        (i for i in bot.deps.store.recent() if i.status in FINAL_STATES), None), timeout=30)
    return settle(bot, incident.id)  # type: ignore[no-any-return]


def eni_groups(instance_id: str) -> dict[str, list[str]]:
    ec2 = aws_client("ec2")
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {e["NetworkInterfaceId"]: [g["GroupId"] for g in e["Groups"]]
            for e in inst["NetworkInterfaces"]}


def request(bot: RunningBot, world: sandbox_world.World, text: str = "isolate suspected miner"
            ) -> Message:
    status, _ = bot.slack.command(DANA, CHANNEL, f"{world.instance_id} {text}")
    assert status == 200
    return card_of(bot.slack.fake)


def test_the_card_shows_what_will_be_touched(bot: RunningBot, world: sandbox_world.World
                                             ) -> None:
    status, body = bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner found")
    assert status == 200 and "Looking up" in body
    card = card_of(bot.slack.fake)
    text = card_text(card)
    for expected in ("web-prod-3", world.instance_id, "running", "t3.large", "123456789012",
                     "us-east-1", world.vpc_id, world.subnet_id, world.second_eni,
                     world.web_group, "(web)", world.mgmt_group, "(mgmt)",
                     "instance-profile/web-prod", f"<@{DANA}>", "miner found",
                     "isolate-security-groups", "tag-instance", "expires"):
        assert expected in text, expected
    for eni in eni_groups(world.instance_id):
        assert eni in text
    assert buttons(card) == ["Approve", "Deny"]
    incident = only_incident(bot)
    assert incident.status == "pending" and incident.card_ts == card.ts
    assert incident.facts["enis"][0]["private_ip"] in text


def test_approval_runs_the_playbook_and_writes_the_timeline(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    before = eni_groups(world.instance_id)
    card = request(bot, world)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = finished(bot)
    assert incident.status == "contained" and incident.decided_by == LEE
    sealed = bot.deps.store.steps(incident.id)[0].details["sealed_group"]  # type: ignore[index]
    assert eni_groups(world.instance_id) == {eni: [sealed] for eni in before}
    thread = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    assert thread[0].startswith("▶️ Approved by <@U0LEE>")
    assert thread[1].startswith("✅ *isolate-security-groups*")
    assert "web,mgmt → cordon-sealed" in thread[1] and world.second_eni in thread[1]
    assert thread[2].startswith("✅ *tag-instance*")
    assert thread[3].startswith("🔒 *Contained*")
    final = fake_slack.message(CHANNEL, card.ts)
    assert final is not None and buttons(final) == []
    assert "Approved* by <@U0LEE>" in card_text(final) and "Contained" in card_text(final)
    ec2 = aws_client("ec2")
    tags = {t["Key"]: t["Value"] for t in ec2.describe_tags(
        Filters=[{"Name": "resource-id", "Values": [world.instance_id]}])["Tags"]}
    assert tags["cordon:incident"] == incident.id and tags["cordon:status"] == "contained"
    # Every step recorded with its captured prior state and timing.
    steps = bot.deps.store.steps(incident.id)
    assert [s.status for s in steps] == ["succeeded", "succeeded"]
    assert all(s.duration_ms is not None for s in steps)
    assert {e["id"] for e in steps[0].captured["enis"]} == set(before)  # type: ignore[index]


def test_the_requester_cannot_approve_their_own_request(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    card = request(bot, world)
    bot.slack.click_button(DANA, CHANNEL, card.ts, "Approve")
    (reply,) = wait_for(lambda: fake_slack.ephemerals_for(DANA))
    assert "someone else must approve" in reply
    assert only_incident(bot).status == "pending"
    assert aws_trace.count("ModifyNetworkInterfaceAttribute") == 0
    decisions = bot.deps.store.decisions(only_incident(bot).id)
    assert [(d.user_id, d.outcome) for d in decisions] == [(DANA, "refused: own request")]
    # An approver's click then runs it — the run her click would have started: it is
    # LEE's, once (had hers approved it, LEE would be told it was already approved).
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = finished(bot)
    assert incident.status == "contained" and incident.decided_by == LEE
    assert fake_slack.ephemerals_for(LEE) == []
    thread = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    assert sum(t.startswith("▶️ Approved by") for t in thread) == 1


def test_someone_not_an_approver_is_refused(bot: RunningBot, world: sandbox_world.World,
                                            fake_slack: FakeSlack) -> None:
    card = request(bot, world)
    for label in ("Approve", "Deny"):
        bot.slack.click_button(SAM, CHANNEL, card.ts, label)
    replies = wait_for(lambda: len(fake_slack.ephemerals_for(SAM)) == 2 and
                       fake_slack.ephemerals_for(SAM))
    assert all("not authorised" in r for r in replies)
    assert only_incident(bot).status == "pending"
    msg = fake_slack.message(CHANNEL, card.ts)
    assert msg is not None and msg.edits == 0


def test_a_user_listed_by_id_may_approve(bot: RunningBot, world: sandbox_world.World) -> None:
    card = request(bot, world)
    bot.slack.click_button(ALEX, CHANNEL, card.ts, "Approve")
    assert finished(bot).decided_by == ALEX


def test_double_clicks_and_racing_approvers_run_the_playbook_once(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    card = request(bot, world)
    body = bot.slack.click_body(LEE, CHANNEL, card.ts, "cordon_approve",
                                json.dumps({"incident_id": only_incident(bot).id}))
    other = bot.slack.click_body(KIM, CHANNEL, card.ts, "cordon_approve",
                                 json.dumps({"incident_id": only_incident(bot).id}))
    # A double click, Slack retrying the same request, and a second approver at once.
    with ThreadPoolExecutor(4) as ex:
        statuses = list(ex.map(bot.slack.post, [body, body, body, other]))
    assert all(s == 200 for s, _ in statuses)
    incident = finished(bot)
    assert incident.status == "contained"
    # Every click has been answered — the three that lost were told so — so no other
    # run can start after this point.
    late = wait_for(lambda: len(e := [e for u in (LEE, KIM)
                                      for e in fake_slack.ephemerals_for(u)]) >= 3 and e)
    assert len(late) == 3 and all("already approved" in e for e in late)
    sealed_moves = aws_trace.count("ModifyNetworkInterfaceAttribute",
                                   lambda p: p.get("Groups") == [incident_sealed(bot)])
    assert sealed_moves == 2  # two ENIs, once each
    thread = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    assert sum(t.startswith("✅ *isolate-security-groups*") for t in thread) == 1


def incident_sealed(bot: RunningBot) -> str:
    steps = bot.deps.store.steps(only_incident(bot).id)
    return str((steps[0].details or {})["sealed_group"])


def test_deny_closes_the_request_and_changes_nothing(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    before = eni_groups(world.instance_id)
    card = request(bot, world)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Deny")
    wait_for(lambda: (m := fake_slack.message(CHANNEL, card.ts)) and m.edits >= 1)
    assert only_incident(bot).status == "denied"
    msg = fake_slack.message(CHANNEL, card.ts)
    assert msg is not None and buttons(msg) == [] and "Denied* by <@U0LEE>" in card_text(msg)
    bot.slack.click(KIM, CHANNEL, card.ts, "cordon_approve",
                    json.dumps({"incident_id": only_incident(bot).id}))
    assert "already denied" in wait_for(lambda: fake_slack.ephemerals_for(KIM))[0]
    assert eni_groups(world.instance_id) == before
    assert aws_trace.count("ModifyNetworkInterfaceAttribute") == 0


def test_the_requester_may_withdraw_their_request(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    card = request(bot, world)
    bot.slack.click_button(DANA, CHANNEL, card.ts, "Deny")
    wait_for(lambda: only_incident(bot).status == "denied")


def lapse(bot: RunningBot, incident_id: str) -> None:
    """Move the request's deadline into the past (as the clock would)."""
    from datetime import timedelta

    from sqlalchemy import update

    from playbooks.models import utcnow

    with bot.deps.store.session() as s:
        s.execute(update(Incident).where(Incident.id == incident_id)
                  .values(expires_at=utcnow() - timedelta(seconds=1)))


def test_an_undecided_request_expires_and_a_late_click_is_told(
        fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
        aws_trace: AwsTrace) -> None:
    from sandbox.harness import start_bot

    bot = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                    session_factory=aws_trace.session, CORDON_APPROVAL_TTL="1m")
    try:
        card = request(bot, world)
        assert sweep(bot.deps)["expired"] == 0
        lapse(bot, only_incident(bot).id)  # the clock moves past the deadline
        assert sweep(bot.deps)["expired"] == 1
        assert only_incident(bot).status == "expired"
        msg = wait_for(lambda: (m := fake_slack.message(CHANNEL, card.ts)) and m.edits and m)
        assert buttons(msg) == [] and "Expired" in card_text(msg)
        assert "expired" in wait_for(lambda: fake_slack.thread(CHANNEL, card.ts))[0].text
        bot.slack.click(LEE, CHANNEL, card.ts, "cordon_approve",
                        json.dumps({"incident_id": only_incident(bot).id}))
        assert "expired" in wait_for(lambda: fake_slack.ephemerals_for(LEE))[0]
        assert aws_trace.count("ModifyNetworkInterfaceAttribute") == 0
        assert sweep(bot.deps)["expired"] == 0
    finally:
        bot.stop()


def test_user_text_is_escaped_in_the_card(bot: RunningBot, world: sandbox_world.World) -> None:
    card = request(bot, world, "miner <!channel> ping <@U0BOSS> & <https://evil|click>")
    text = card_text(card)
    # The only links on the card are Cordon's own console links.
    links = re.findall(r"<(https://[^|>]*)", text)
    assert links and all(".console.aws.amazon.com/ec2/home?region=us-east-1#" in u
                         for u in links)
    assert "<!channel>" not in text and "<@U0BOSS>" not in text and "evil" not in str(links)
    assert "&lt;!channel&gt;" in text and "&lt;@U0BOSS&gt;" in text and "&amp;" in text


def test_an_aws_failure_is_reported_with_its_code_and_nothing_is_lost(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    before = eni_groups(world.instance_id)
    card = request(bot, world)
    aws_trace.fail("ModifyNetworkInterfaceAttribute", "UnauthorizedOperation",
                   "You are not authorized to perform this operation.", times=10)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = finished(bot)
    assert incident.status == "failed"
    thread = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    failure = next(t for t in thread if "isolate-security-groups" in t and "failed" in t)
    assert "UnauthorizedOperation" in failure
    # Where each ENI is, described after the fact: back on its own groups.
    assert failure.count("(its own groups, as before)") == len(before)
    assert any(t.startswith("❌ *Failed*") for t in thread)
    steps = bot.deps.store.steps(incident.id)
    assert steps[0].error_code == "UnauthorizedOperation"
    assert steps[0].captured is not None  # the prior state was saved before anything changed
    assert steps[1].status == "not-run"
    assert eni_groups(world.instance_id) == before


def test_the_ack_comes_back_fast_even_when_aws_is_slow(
        bot: RunningBot, world: sandbox_world.World, aws_trace: AwsTrace) -> None:
    aws_trace.delay["DescribeInstances"] = 4.0
    status, body = bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate slow aws")
    assert status == 200 and "Looking up" in body
    # The ack did not wait for AWS: the look-up is still under way when it arrives.
    assert bot.slack.fake.channel_messages(CHANNEL) == []
    card_of(bot.slack.fake)  # the card still arrives once AWS answers


def test_a_slack_outage_delays_the_timeline_but_loses_nothing(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    card = request(bot, world)
    fake_slack.fail_next("chat.postMessage", "service_unavailable", times=3)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = wait_for(lambda: next(
        (i for i in bot.deps.store.recent() if i.status in FINAL_STATES), None))
    assert incident.status == "contained"  # Slack being down did not stop the containment
    # What Slack refused is sent again by the sweep.
    def resent() -> bool:
        sweep(bot.deps)
        return not bot.deps.store.unsent()

    wait_for(resent, timeout=30, every=0.2)  # backing off: 0.5 s, 1 s, 2 s
    thread = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    assert len(thread) == 4 and thread[-1].startswith("🔒 *Contained*")
    assert thread[1].startswith("✅ *isolate-security-groups*")  # still in order


def _status(bot: RunningBot, user: str, text: str, fake: FakeSlack) -> str:
    before = len(fake.ephemerals_for(user))
    bot.slack.command(user, CHANNEL, text)
    return str(wait_for(lambda: fake.ephemerals_for(user)[before:])[0])


def test_status_shows_who_did_what(bot: RunningBot, world: sandbox_world.World,
                                   fake_slack: FakeSlack) -> None:
    card = request(bot, world)
    bot.slack.click_button(DANA, CHANNEL, card.ts, "Approve")
    wait_for(lambda: fake_slack.ephemerals_for(DANA))
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = finished(bot)
    by_id = _status(bot, SAM, f"status {incident.id}", fake_slack)
    for expected in (incident.id, world.instance_id, "contained", "<@U0DANA> approve",
                     "refused: own request", "<@U0LEE> approve", "accepted",
                     "isolate-security-groups — succeeded", "tag-instance — succeeded"):
        assert expected in by_id, expected
    # The lifecycle's durations, each stage reached.
    timed = next(line for line in by_id.splitlines() if line.startswith("⏱ request → card"))
    assert "→ decision" in timed and "→ cut" in timed and "→ contained" in timed
    assert "—" not in timed  # no stage left unreached
    final_card = json.dumps(fake_slack.message(CHANNEL, card.ts).blocks, ensure_ascii=False)
    assert "⏱ request → card" in final_card
    assert incident.id in _status(bot, SAM, f"status {world.instance_id}", fake_slack)
    assert incident.id in _status(bot, SAM, "status", fake_slack)


def test_help_shows_the_grammar(bot: RunningBot) -> None:
    from playbooks.catalogue import INSTANCE_PLAYBOOKS

    status, body = bot.slack.command(SAM, CHANNEL, "help")
    assert status == 200
    # Every verb of the grammar, and every playbook a person can name.
    # Placeholders are escaped (Slack would read `<instance>` as a link).
    for verb in ("/contain &lt;instance&gt;", "/contain key", "/contain release",
                 "/contain status", "/contain help"):
        assert verb in body, verb
    for name in INSTANCE_PLAYBOOKS:
        assert f"`{name}`" in body, name
    assert bot.deps.store.recent() == []  # help changes nothing


def _refusal(bot: RunningBot, fake: FakeSlack, text: str) -> str:
    """Bad input gets one ephemeral explanation; no request, no card, nothing in AWS."""
    before = len(fake.ephemerals_for(DANA))
    status, body = bot.slack.command(DANA, CHANNEL, text)
    assert status == 200
    if "Looking up" in body:
        body = wait_for(lambda: len(fake.ephemerals_for(DANA)) > before
                        and fake.ephemerals_for(DANA)[-1])
    assert fake.channel_messages(CHANNEL) == []
    assert bot.deps.store.recent() == []
    return body


def test_bad_input_is_explained_and_changes_nothing(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    cases: dict[str, Any] = {
        "i-0123456789abcdef0 isolate not there": "no instance i-0123456789abcdef0",
        "i-12345 isolate typo": "is not an instance id",
        f"{world.instance_id} isolat typo in playbook": "Did you mean `isolate`",
        f"{world.instance_id} nuke": "unknown playbook `nuke`",
        f"{world.instance_id} region=ap-south-1 not configured": "is not configured",
        f"{world.instance_id} colour=red": "unknown option",
        # Not an id, an ARN or an address: taken as an exact Name tag, and not found.
        "please contain the web server <!here>": "no instance named `please`",
        "stauts": "looks like a command word (did you mean `/contain status …`?)",
        "status <!channel>": "takes nothing, an instance id",
    }
    for text, expected in cases.items():
        reply = _refusal(bot, fake_slack, text)
        assert expected in reply, (text, reply)
        assert "<!here>" not in reply and "<!channel>" not in reply
    assert aws_trace.count("ModifyNetworkInterfaceAttribute") == 0
    # A good request after them makes the first and only card: none of the refused ones
    # made a request or a card, however late its listener ran.
    card = request(bot, world)
    assert fake_slack.channel_messages(CHANNEL) == [card]
    assert [i.target_id for i in bot.deps.store.recent()] == [world.instance_id]


def test_a_second_request_for_the_same_instance_is_refused(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    request(bot, world)
    bot.slack.command(KIM, CHANNEL, f"{world.instance_id} isolate again")
    reply = wait_for(lambda: fake_slack.ephemerals_for(KIM))[0]
    assert "already has an open request" in reply
    assert len(fake_slack.channel_messages(CHANNEL)) == 1


def test_the_card_needs_the_bot_in_the_channel(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    fake_slack.not_in.add(CHANNEL)
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")
    reply = wait_for(lambda: fake_slack.ephemerals_for(DANA))[0]
    assert "not_in_channel" in reply and "Invite" in reply
    assert bot.deps.store.recent() == []


def test_requests_with_a_bad_signature_are_rejected(bot: RunningBot, world: sandbox_world.World,
                                                    fake_slack: FakeSlack) -> None:
    body = bot.slack.command_body(DANA, CHANNEL, f"{world.instance_id} isolate forged")
    assert bot.slack.post(body, signature="v0=" + "0" * 64)[0] == 401
    assert bot.slack.post(body, timestamp=int(time.time()) - 3600)[0] == 401
    # The same request signed properly is then taken: one card, the forged ones none.
    assert bot.slack.post(body)[0] == 200
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    assert len(bot.deps.store.recent()) == 1 and card.ts
    assert len(fake_slack.channel_messages(CHANNEL)) == 1


def test_the_scheduler_expires_requests_on_its_own(
        fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
        aws_trace: AwsTrace) -> None:
    from bot.scheduler import start_scheduler
    from sandbox.harness import start_bot

    bot = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                    session_factory=aws_trace.session, CORDON_APPROVAL_TTL="1m")
    scheduler = start_scheduler(bot.deps, interval_seconds=1)
    try:
        card = request(bot, world)
        lapse(bot, only_incident(bot).id)
        wait_for(lambda: only_incident(bot).status == "expired", timeout=10)
        wait_for(lambda: "Expired" in card_text(fake_slack.message(CHANNEL, card.ts)))  # type: ignore[arg-type]
    finally:
        scheduler.shutdown(wait=True)
        bot.stop()
