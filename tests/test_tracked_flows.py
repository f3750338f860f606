"""Flows no security group ends: an instance whose subnet leaves through a NAT gateway gets
deny entries for its own address on the NAT gateway subnet's network ACL, both ways, below
every allow, in the round of the cut; a bystander in its subnet stays allowed; the release
deletes exactly those entries. Through the real endpoint against moto. moto evaluates no
ACL and tracks no connection: the tests evaluate the stored ACLs as AWS does."""

from __future__ import annotations

from typing import Any

import pytest

from handlers.retry import Backoff
from handlers.tracked_flows import decides, free_numbers, room
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.faulty_aws import FaultyAws
from sandbox.harness import RunningBot, wait_for
from tests.conftest import AwsTrace, aws_client, settle_card
from tests.test_failsafe import MODIFY, to

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"


def nat_layout(world: sandbox_world.World) -> dict[str, str]:
    return sandbox_world.add_nat_gateway(world)


def sealed_group(vpc_id: str) -> str:
    (group,) = aws_client("ec2").describe_security_groups(Filters=[
        {"Name": "vpc-id", "Values": [vpc_id]},
        {"Name": "group-name", "Values": ["cordon-sealed"]}])["SecurityGroups"]
    return str(group["GroupId"])


def acl_of(subnet: str) -> dict[str, Any]:
    (acl,) = aws_client("ec2").describe_network_acls(Filters=[
        {"Name": "association.subnet-id", "Values": [subnet]}])["NetworkAcls"]
    return dict(acl)


def address(instance_id: str) -> str:
    inst = aws_client("ec2").describe_instances(InstanceIds=[instance_id])[
        "Reservations"][0]["Instances"][0]
    return f"{inst['PrivateIpAddress']}/32"


def test_flows_through_a_nat_gateway_are_cut_on_its_subnets_acl_and_released(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    layout = nat_layout(world)
    before = acl_of(layout["public"])["Entries"]
    mine, bystander = address(world.instance_id), address(world.bystander_id)
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate reverse shell via the NAT")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    assert layout["nat"] in str(card.blocks)
    assert "only this instance is affected" in str(card.blocks)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = settle_card(bot, card.ts)
    assert incident.status == "contained", incident.summary
    acl = acl_of(layout["public"])
    ours = [e for e in acl["Entries"] if e.get("CidrBlock") == mine]
    assert sorted((e["Egress"], e["RuleAction"], e["Protocol"]) for e in ours) == [
        (False, "deny", "-1"), (True, "deny", "-1")]
    allows = [e["RuleNumber"] for e in acl["Entries"] if e["RuleAction"] == "allow"]
    assert all(e["RuleNumber"] < min(allows) for e in ours)
    # Evaluated as AWS evaluates it: all the instance's traffic is denied both ways; the
    # bystander in its subnet (the same default ACL) is still allowed.
    assert decides(acl, False, mine) == decides(acl, True, mine) == "deny"
    assert decides(acl, False, bystander) == decides(acl, True, bystander) == "allow"
    thread = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    assert any("sever-tracked-flows" in t and layout["nat"] in t for t in thread)

    bot.slack.command(DANA, CHANNEL, f"release {incident.id} tabletop over")
    release_card = wait_for(lambda: fake_slack.channel_messages(CHANNEL)[1:])[0]
    bot.slack.click_button(LEE, CHANNEL, release_card.ts, "Approve")
    release = settle_card(bot, release_card.ts)
    assert release.status == "released", release.summary
    assert acl_of(layout["public"])["Entries"] == before


def test_the_entries_go_out_while_the_seal_is_still_on_the_wire(
        faulty_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        faulty: FaultyAws, fast_backoff: Backoff) -> None:
    """The ACL entries do not wait for the security-group cut: with every seal held
    unanswered, both entries are already in the ACL. (Once let go, the held seals are
    lost on the way and sent again; the run still ends contained.)"""
    layout = nat_layout(world)
    mine = address(world.instance_id)
    faulty_bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate reverse shell")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    sealed = sealed_group(world.vpc_id)
    faulty.add(MODIFY, "hold", times=-1, where=to(sealed))
    faulty_bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    assert faulty.wait_held(2)
    ours = wait_for(lambda: len(found := [e for e in acl_of(layout["public"])["Entries"]
                                          if e.get("CidrBlock") == mine
                                          and e["RuleAction"] == "deny"]) == 2 and found)
    assert faulty.holding == 2 and len(ours) == 2
    faulty.release()
    incident = settle_card(faulty_bot, card.ts)
    assert incident.status == "contained", incident.summary


def test_a_full_acl_fails_the_step_and_says_which_flows_may_live_on(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    layout = nat_layout(world)
    ec2 = aws_client("ec2")
    taken = room(acl_of(layout["public"]), False)
    for n in range(taken):
        for egress in (False, True):
            ec2.create_network_acl_entry(NetworkAclId=layout["acl"], RuleNumber=200 + n,
                                         Protocol="6", RuleAction="allow", Egress=egress,
                                         CidrBlock=f"192.0.2.{n}/32", PortRange={"From": 443,
                                                                                  "To": 443})
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate reverse shell")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = settle_card(bot, card.ts)
    assert incident.status == "partially contained", incident.summary
    (step,) = [s for s in bot.deps.store.steps(incident.id) if s.name == "sever-tracked-flows"]
    assert step.error_code == "NetworkAclEntryLimitExceeded"
    assert layout["nat"] in (step.error_message or "") and "may live on" in (
        step.error_message or "")
    # The security-group cut itself went ahead.
    (cut,) = [s for s in bot.deps.store.steps(incident.id)
              if s.name == "isolate-security-groups"]
    assert cut.status == "succeeded"


def test_a_rule_number_another_incident_took_meanwhile_is_retried_with_the_next(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    """Another containment took a number between the card and the click: AWS refuses the
    create (`NetworkAclEntryAlreadyExists`) and the entry goes in under the next free one."""
    layout = nat_layout(world)
    mine = address(world.instance_id)
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate reverse shell")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    taken = max(free_numbers(acl_of(layout["public"]), False, set()))
    aws_client("ec2").create_network_acl_entry(
        NetworkAclId=layout["acl"], RuleNumber=taken, Protocol="-1", RuleAction="deny",
        Egress=False, CidrBlock="198.51.100.9/32")
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = settle_card(bot, card.ts)
    assert incident.status == "contained", incident.summary
    acl = acl_of(layout["public"])
    inbound = [e for e in acl["Entries"] if not e["Egress"] and e.get("CidrBlock") == mine]
    assert len(inbound) == 1 and inbound[0]["RuleNumber"] != taken
    assert decides(acl, False, mine) == "deny"
    # The other incident's entry is untouched.
    assert any(e["RuleNumber"] == taken and e.get("CidrBlock") == "198.51.100.9/32"
               for e in acl["Entries"])


@pytest.mark.parametrize("used", [[], [90, 99], [99]])
def test_rule_numbers_below_every_allow_never_reuse_one(used: list[int]) -> None:
    acl = {"Entries": [{"RuleNumber": 100, "Egress": False, "RuleAction": "allow"},
                       *({"RuleNumber": n, "Egress": False, "RuleAction": "deny"}
                         for n in used)]}
    free = free_numbers(acl, False, {98})
    assert free[0] < 100 and not set(free) & {*used, 98}


def test_an_entry_whose_answer_was_lost_is_not_made_twice_and_is_released(
        faulty_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        faulty: FaultyAws, fast_backoff: Backoff) -> None:
    """moto adds the entry, the answer is lost: the retry is refused (the number is
    taken — by this very entry), which is recognised as ours. One entry per direction,
    and the release deletes it."""
    layout = nat_layout(world)
    before = acl_of(layout["public"])["Entries"]
    mine = address(world.instance_id)
    faulty.add("CreateNetworkAclEntry", "drop", times=1)
    faulty_bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate reverse shell")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    faulty_bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = settle_card(faulty_bot, card.ts)
    assert incident.status == "contained", incident.summary
    assert len(faulty.calls("CreateNetworkAclEntry")) > len(
        [e for e in acl_of(layout["public"])["Entries"] if e.get("CidrBlock") == mine])
    ours = [e for e in acl_of(layout["public"])["Entries"] if e.get("CidrBlock") == mine]
    assert sorted(e["Egress"] for e in ours) == [False, True]
    faulty_bot.slack.command(DANA, CHANNEL, f"release {incident.id} tabletop over")
    release_card = wait_for(lambda: fake_slack.channel_messages(CHANNEL)[1:])[0]
    faulty_bot.slack.click_button(LEE, CHANNEL, release_card.ts, "Approve")
    assert settle_card(faulty_bot, release_card.ts).status == "released"
    assert acl_of(layout["public"])["Entries"] == before


def test_a_fleets_addresses_are_covered_by_the_fewest_blocks_that_hold_no_other() -> None:
    import ipaddress
    import random

    from handlers.tracked_flows import block_of, cover

    assert cover(["10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.7"], ["10.0.0.8"]) == [
        "10.0.0.4/30"]
    assert cover(["10.0.0.1", "10.0.0.2"], ["10.0.0.3"]) == ["10.0.0.0/31", "10.0.0.2/32"]
    rng = random.Random(7)
    for _ in range(50):
        pool = rng.sample(range(1, 255), 60)
        wanted = [f"10.1.2.{n}" for n in pool[:30]]
        others = [f"10.1.2.{n}" for n in pool[30:]]
        blocks = cover(wanted, others)
        assert all(block_of(a, blocks) for a in wanted)
        assert not any(block_of(o, blocks) for o in others)
        # Never more blocks than addresses; no block inside another.
        nets = [ipaddress.ip_network(b) for b in blocks]
        assert len(blocks) <= len(wanted)
        assert not any(a != b and a.subnet_of(b) for a in nets for b in nets)  # type: ignore[arg-type]
