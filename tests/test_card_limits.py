"""The approval card at and beyond Slack's limits: nothing over a limit, a count of what
is not shown, the full plan in the thread before the card can be approved, and a
confirm dialog on wide playbooks' Approve. The builders are called as a new user's
requests would call them; the end-to-end case goes through the real endpoint."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from bot import blocks
from playbooks.models import Incident, utcnow
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, wait_for
from tests.conftest import aws_client, settle_card

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"


def incident(playbook: str = "full", **facts: Any) -> Incident:
    now = utcnow()
    base = {"name": "web-prod-3", "state": "running", "type": "t3.large", "account": "1234",
            "region": "us-east-1", "vpc_id": "vpc-1", "subnet_id": "subnet-1", "enis": []}
    return Incident(id="CRD-ABC123", kind="key" if facts.get("key_id") else "instance",
                    target_id="i-0123456789abcdef0", region="us-east-1", account="1234",
                    playbook=playbook, reason="miner", requester=DANA, channel_id=CHANNEL,
                    status="pending", facts={**base, **facts}, created_at=now,
                    expires_at=now + timedelta(minutes=30), approvals_required=1, summary="",
                    options={})


def many_enis(n: int = 15, groups: int = 5, name_len: int = 255) -> list[dict[str, Any]]:
    return [{"id": f"eni-{i:017x}", "private_ip": f"10.0.0.{i}",
             "groups": [{"id": f"sg-{i:08x}{g:09x}", "name": ("g" * name_len)[: name_len - 3]
                         + f"{g:03d}"} for g in range(groups)]} for i in range(n)]


def within_limits(card: list[dict[str, Any]]) -> None:
    assert len(card) <= 50
    for block in card:
        if block["type"] == "header":
            assert len(block["text"]["text"]) <= 150
        if block["type"] == "section":
            if "text" in block:
                assert len(block["text"]["text"]) <= 3000
            assert len(block.get("fields", [])) <= 10
            for f in block.get("fields", []):
                assert len(f["text"]) <= 2000
        if block["type"] == "context":
            for el in block["elements"]:
                assert len(el["text"]) <= 3000
        for el in block.get("elements", []):
            if el.get("type") == "button":
                assert len(el["value"]) <= 2000


def shown(card: list[dict[str, Any]]) -> str:
    return json.dumps(card, ensure_ascii=False)


def test_fifteen_enis_with_five_long_groups_each_say_how_many_are_not_shown() -> None:
    enis = many_enis()
    inc = incident(enis=enis)
    _, card = blocks.render_card(inc)
    within_limits(card)
    text = shown(card)
    section = next(b["text"]["text"] for b in card
                   if b["type"] == "section" and b.get("text", {}).get("text", "").startswith(
                       "*Network interfaces*"))
    listed = [e["id"] for e in enis if e["id"] in section]
    assert 0 < len(listed) < 15
    assert f"… and {15 - len(listed)} more — the full plan is in the thread" in text
    assert blocks.card_hides(inc) == [f"network interfaces: {15 - len(listed)} of 15 not shown"]
    # No buttons until the full plan is in the thread.
    assert "Approve" not in text and "buttons appear once it is there" in text
    plan = blocks.render_full_plan(inc)
    assert all(len(part) <= blocks.PLAN_PART_MAX for part in plan)
    assert all(any(e["id"] in part for part in plan) for e in enis)
    posted = incident(enis=enis, plan="posted")
    _, card = blocks.render_card(posted)
    within_limits(card)
    assert "Approve" in shown(card) and "The full plan is in the thread" in shown(card)


def test_a_card_that_fits_shows_everything_and_its_buttons_at_once() -> None:
    inc = incident(enis=many_enis(n=3, groups=2, name_len=20))
    _, card = blocks.render_card(inc)
    within_limits(card)
    assert blocks.card_hides(inc) == [] and "Approve" in shown(card)
    assert "more — the full plan" not in shown(card)


def test_an_igw_blast_radius_of_200_instances_and_80_routes() -> None:
    others = [{"id": f"i-{i:017x}", "name": f"worker-{i}"} for i in range(200)]
    changes = [f"remove route 10.{i}.0.0/16 → igw-0123456789abcdef0 from rtb-{i:017x}"
               for i in range(80)]
    inc = incident("igw", blast={"scope": "vpc", "vpc_id": "vpc-1", "others": others,
                                 "changes": changes, "still_open": ["0.0.0.0/0 → nat-1"]})
    inc.approvals_required = 2
    _, card = blocks.render_card(incident("igw", plan="posted", blast=inc.facts["blast"]))
    within_limits(card)
    text = shown(card)
    routes = sum(1 for c in changes if c in text)
    assert routes < 80 and f"… and {80 - routes} more" in text
    hosts = sum(1 for o in others if f"`{o['id']}`" in text)
    assert hosts < 200 and f"… and {200 - hosts} more" in text
    plan = "\n".join(blocks.render_full_plan(inc))
    assert all(c in plan for c in changes) and all(o["id"] in plan for o in others)
    # Approve asks first, with the count.
    approve = next(el for b in card if b["type"] == "actions" for el in b["elements"]
                   if el["text"]["text"] == "Approve")
    assert "200 other instances" in approve["confirm"]["text"]["text"]
    assert "80 changes" in approve["confirm"]["text"]["text"]


def test_a_key_whose_user_has_20_long_policies_gives_a_card_slack_accepts() -> None:
    policies = [("p" * 125) + f"{i:03d}" for i in range(20)]
    inc = incident("key", key_id="AKIAIOSFODNN7EXAMPLE", user="ci-deploy",
                   attached_policies=policies, inline_policies=policies, other_keys=[],
                   temporary=False)
    _, card = blocks.render_card(inc)
    within_limits(card)
    assert "more — the full plan is in the thread" in shown(card)
    plan = "\n".join(blocks.render_full_plan(inc))
    assert all(p in plan for p in policies)


def test_a_long_list_of_what_security_groups_do_not_cut_fits_its_context() -> None:
    limits = [f"registered with an NLB ({'x' * 200}-{i}): flows stay tracked"
              for i in range(40)]
    _, card = blocks.render_card(incident(untracked_limits=limits))
    within_limits(card)
    assert "more — the full plan" in shown(card)


@pytest.fixture
def wide_instance(world: sandbox_world.World) -> sandbox_world.World:
    """The compromised instance with 15 ENIs, five groups with long names on each."""
    ec2 = aws_client("ec2")
    groups = [ec2.create_security_group(GroupName=("tier-" + "x" * 240)[:250] + f"-{g}",
                                        Description="long", VpcId=world.vpc_id)["GroupId"]
              for g in range(5)]
    for index in range(13):
        eni = ec2.create_network_interface(SubnetId=world.subnet_id, Groups=groups)
        ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterface"][
            "NetworkInterfaceId"], InstanceId=world.instance_id, DeviceIndex=2 + index)
    return world


def test_the_full_plan_is_in_the_thread_before_anyone_can_approve(
        bot: RunningBot, wide_instance: sandbox_world.World, fake_slack: FakeSlack) -> None:
    world = wide_instance
    # The plan's first part is refused once: the card stays without buttons meanwhile.
    fake_slack.fail_next("chat.postMessage", "internal_error", times=3, after=1)
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner on port 3333")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    inc = wait_for(lambda: next((i for i in bot.deps.store.recent() if i.card_ts == card.ts),
                                None))
    assert "Approve" not in shown(card.blocks)
    # A forged Approve (the card has no button yet) is refused and changes nothing.
    value = json.dumps({"incident_id": inc.id})
    bot.slack.click(LEE, CHANNEL, card.ts, "cordon_approve", value)
    wait_for(lambda: any("full plan is not in its thread yet" in t
                         for t in fake_slack.ephemerals_for(LEE)))
    assert (bot.deps.store.get(inc.id) or inc).status == "pending"
    # The outbox sends the plan (retried as the scheduler's sweep does), then the buttons
    # appear.
    def buttons_shown() -> Any:
        bot.deps.timeline.flush()
        m = fake_slack.message(CHANNEL, card.ts)
        return m is not None and "Approve" in shown(m.blocks) and m

    fresh = wait_for(buttons_shown, timeout=30, every=0.2)
    thread = "\n".join(m.text for m in fake_slack.thread(CHANNEL, card.ts))
    enis = sandbox_world.groups_by_eni(world.instance_id)
    assert len(enis) == 15 and all(e in thread for e in enis)
    assert "more — the full plan is in the thread" in shown(fresh.blocks)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    done = settle_card(bot, card.ts)
    assert done.status == "contained"
    sealed = sandbox_world.groups_by_eni(world.instance_id)
    assert all(len(v) == 1 and v[0].startswith("cordon-sealed") for v in sealed.values())
