"""Subnet- and VPC-wide playbooks (nacl, route, igw): blast radius on the card, two
distinct approvers, the change itself, and a release that restores exactly what was
recorded. Against moto's server, through the real HTTP endpoint, both databases."""

from __future__ import annotations

import json
from typing import Any

import pytest

from handlers.network_acl import isolates
from playbooks.models import Incident
from playbooks.store import FINAL_STATES
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack, Message
from sandbox.harness import RunningBot, wait_for
from tests.conftest import AwsTrace, aws_client, settle_card

CHANNEL = "C0INCIDENT"
DANA, LEE, KIM = "U0DANA", "U0LEE", "U0KIM"


def ec2() -> Any:
    return aws_client("ec2")


@pytest.fixture
def network(world: sandbox_world.World) -> sandbox_world.Network:
    return sandbox_world.add_network(world)


def acl_of(subnet: str) -> dict[str, Any]:
    (acl,) = ec2().describe_network_acls(Filters=[
        {"Name": "association.subnet-id", "Values": [subnet]}])["NetworkAcls"]
    return dict(acl)


def table_of(subnet: str, vpc_id: str) -> str:
    tables = ec2().describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    for t in tables["RouteTables"]:
        if any(a.get("SubnetId") == subnet for a in t.get("Associations", [])):
            return str(t["RouteTableId"])
    return "main"


def routes(vpc_id: str) -> dict[str, list[tuple[Any, ...]]]:
    tables = ec2().describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    return {t["RouteTableId"]: sorted((r.get("DestinationCidrBlock") or "",
                                       r.get("DestinationIpv6CidrBlock") or "",
                                       r.get("GatewayId") or r.get("EgressOnlyInternetGatewayId")
                                       or r.get("NatGatewayId") or "") for r in t["Routes"])
            for t in tables["RouteTables"]}


def entries(acl_id: str) -> list[tuple[Any, ...]]:
    (acl,) = ec2().describe_network_acls(NetworkAclIds=[acl_id])["NetworkAcls"]
    return sorted((e["RuleNumber"], e["Egress"], e.get("CidrBlock"), e.get("Ipv6CidrBlock"),
                   e["RuleAction"]) for e in acl["Entries"])


def card_text(msg: Message) -> str:
    return json.dumps(msg.blocks)


def request(bot: RunningBot, instance: str, text: str) -> Message:
    bot.slack.command(DANA, CHANNEL, f"{instance} {text}")
    count = len(bot.slack.fake.channel_messages(CHANNEL))
    return wait_for(lambda: bot.slack.fake.channel_messages(CHANNEL)[count - 1:] if count else
                    bot.slack.fake.channel_messages(CHANNEL))[-1]  # type: ignore[no-any-return]


def approve_twice(bot: RunningBot, card: Message) -> Incident:
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    wait_for(lambda: "1 of 2 approvals" in card_text(bot.slack.fake.message(CHANNEL, card.ts)))  # type: ignore[arg-type]
    bot.slack.click_button(KIM, CHANNEL, card.ts, "Approve")
    return settle_card(bot, card.ts)  # type: ignore[no-any-return]


def release(bot: RunningBot, incident: Incident) -> Incident:
    bot.slack.command(DANA, CHANNEL, f"release {incident.id}")
    card = wait_for(lambda: [m for m in bot.slack.fake.channel_messages(CHANNEL)
                             if "Release request" in card_text(m)])[-1]
    return approve_twice(bot, card)


def test_the_card_shows_the_blast_radius_and_needs_two_approvers(
        bot: RunningBot, world: sandbox_world.World, network: sandbox_world.Network,
        fake_slack: FakeSlack, aws_trace: AwsTrace) -> None:
    card = request(bot, world.instance_id, "nacl worm spreading")
    text = card_text(card)
    assert "Blast radius: 2 other instances in subnet" in text
    assert world.bystander_id in text and "billing-api-1" in text
    assert network.neighbour in text and "web-prod-4" in text
    assert network.other_instance not in text  # another subnet: not hit
    assert "0 of 2 approvals" in text
    # One approval is not enough; the same person twice counts once; the requester never.
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    wait_for(lambda: "1 of 2 approvals" in card_text(fake_slack.message(CHANNEL, card.ts)))  # type: ignore[arg-type]
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    assert "already counted" in wait_for(lambda: fake_slack.ephemerals_for(LEE))[0]
    bot.slack.click_button(DANA, CHANNEL, card.ts, "Approve")
    assert "someone else" in wait_for(lambda: fake_slack.ephemerals_for(DANA))[0]
    assert bot.deps.store.recent()[0].status == "pending"
    assert aws_trace.count("ReplaceNetworkAclAssociation") == 0
    bot.slack.click_button(KIM, CHANNEL, card.ts, "Approve")
    incident = wait_for(lambda: next((i for i in bot.deps.store.recent()
                                      if i.status in FINAL_STATES), None), timeout=30)
    assert incident.status == "contained"
    # The approval that ran it was the second distinct approver's: the refused clicks
    # were recorded as refusals, never as votes, and the subnet was switched once.
    assert set(bot.deps.store.votes(incident.id)) == {LEE, KIM}
    assert incident.decided_by == KIM
    outcomes = [(d.user_id, d.outcome) for d in bot.deps.store.decisions(incident.id)]
    assert outcomes[:2] == [(LEE, "counted"), (LEE, "already counted")]
    assert outcomes[-1] == (KIM, "accepted") and (DANA, "accepted") not in outcomes


def test_nacl_denies_all_both_ways_and_release_restores_the_association(
        bot: RunningBot, world: sandbox_world.World, network: sandbox_world.Network,
        fake_slack: FakeSlack) -> None:
    original = acl_of(world.subnet_id)["NetworkAclId"]
    card = request(bot, world.instance_id, "nacl worm spreading")
    incident = approve_twice(bot, card)
    assert incident.status == "contained", incident.summary
    now = acl_of(world.subnet_id)
    assert now["NetworkAclId"] != original and isolates(now)
    assert {"cordon:role": "isolation-nacl"}.items() <= {
        t["Key"]: t["Value"] for t in now["Tags"]}.items()
    assert acl_of(network.other_subnet)["NetworkAclId"] == original  # other subnet untouched
    replies = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    assert any("stateless: existing connections are cut too" in r for r in replies)
    released = release(bot, incident)
    assert released.status == "released", released.summary
    assert acl_of(world.subnet_id)["NetworkAclId"] == original


def test_nacl_insert_mode_puts_deny_entries_first_and_removes_them_on_release(
        bot: RunningBot, world: sandbox_world.World, network: sandbox_world.Network) -> None:
    acl_id = acl_of(world.subnet_id)["NetworkAclId"]
    before = entries(acl_id)
    card = request(bot, world.instance_id, "nacl mode=insert worm")
    # The other subnet shares this ACL, so its instance is in the blast radius too.
    assert network.other_instance in card_text(card) and network.other_subnet in card_text(card)
    incident = approve_twice(bot, card)
    assert incident.status == "contained", incident.summary
    assert acl_of(world.subnet_id)["NetworkAclId"] == acl_id  # same ACL, new entries
    assert isolates(acl_of(world.subnet_id))
    added = sorted(set(entries(acl_id)) - set(before))
    assert [(n, egress, action) for n, egress, _, _, action in added] == [
        (1, False, "deny"), (1, True, "deny"), (2, False, "deny"), (2, True, "deny")]
    assert release(bot, incident).status == "released"
    assert entries(acl_id) == before


def test_nacl_insert_on_a_full_acl_changes_nothing(
        bot: RunningBot, world: sandbox_world.World, network: sandbox_world.Network,
        fake_slack: FakeSlack) -> None:
    acl_id = acl_of(world.subnet_id)["NetworkAclId"]
    for n in range(1, 20):
        for egress in (False, True):
            ec2().create_network_acl_entry(NetworkAclId=acl_id, RuleNumber=n, Protocol="6",
                                           RuleAction="allow", Egress=egress,
                                           CidrBlock=f"192.0.2.{n}/32",
                                           PortRange={"From": 443, "To": 443})
    before = entries(acl_id)
    card = request(bot, world.instance_id, "nacl mode=insert worm")
    incident = approve_twice(bot, card)
    assert incident.status == "failed"
    assert entries(acl_id) == before
    failure = next(m.text for m in fake_slack.thread(CHANNEL, card.ts)
                   if "isolate-subnet-nacl* failed" in m.text)
    assert "NetworkAclFull" in failure and "nothing was changed" in failure


def test_nacl_insert_is_not_fooled_by_a_deny_behind_an_allow(
        bot: RunningBot, world: sandbox_world.World, network: sandbox_world.Network,
        fake_slack: FakeSlack) -> None:
    """Rule 1 allows 10.0.0.0/8, rule 2 denies everything: 10/8 still flows, so the ACL
    is not "already isolated" — and no deny can go ahead of rule 1, so insert mode says
    so and changes nothing."""
    acl_id = acl_of(world.subnet_id)["NetworkAclId"]
    for egress in (False, True):
        ec2().create_network_acl_entry(NetworkAclId=acl_id, RuleNumber=1, Protocol="-1",
                                       RuleAction="allow", Egress=egress,
                                       CidrBlock="10.0.0.0/8")
        ec2().create_network_acl_entry(NetworkAclId=acl_id, RuleNumber=2, Protocol="-1",
                                       RuleAction="deny", Egress=egress,
                                       CidrBlock="0.0.0.0/0")
    assert not isolates(acl_of(world.subnet_id))
    before = entries(acl_id)
    card = request(bot, world.instance_id, "nacl mode=insert worm")
    incident = approve_twice(bot, card)
    assert incident.status == "failed"
    steps = {s.name: s for s in bot.deps.store.steps(incident.id)}
    assert steps["isolate-subnet-nacl"].error_code == "NetworkAclFull"  # not "skipped"
    assert entries(acl_id) == before


def test_route_leaves_only_the_local_route_and_release_restores_it(
        bot: RunningBot, world: sandbox_world.World, network: sandbox_world.Network,
        fake_slack: FakeSlack) -> None:
    # db-1's subnet uses the main route table implicitly; web-prod-3's has its own.
    for instance, subnet, before_table in (
            (world.instance_id, world.subnet_id, network.public_table),
            (network.other_instance, network.other_subnet, "main")):
        assert table_of(subnet, world.vpc_id) == before_table
        fake_slack.reset()
        fake_slack.usergroups["S0ONCALL"] = [LEE, KIM]
        card = request(bot, instance, "route exfiltration")
        incident = approve_twice(bot, card)
        assert incident.status == "contained", incident.summary
        isolated = table_of(subnet, world.vpc_id)
        assert isolated not in (before_table, network.main_table)
        other = network.other_subnet if subnet == world.subnet_id else world.subnet_id
        assert table_of(other, world.vpc_id) in (network.public_table, "main")  # untouched
        assert all(gw == "local" for _, _, gw in routes(world.vpc_id)[isolated])
        replies = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
        assert any("can still reach its own subnet" in r for r in replies)
        assert release(bot, incident).status == "released"
        assert table_of(subnet, world.vpc_id) == before_table


def test_igw_removes_every_internet_route_and_release_puts_them_back(
        bot: RunningBot, world: sandbox_world.World, network: sandbox_world.Network) -> None:
    before = routes(world.vpc_id)
    card = request(bot, world.instance_id, "igw data leaving the VPC")
    text = card_text(card)
    assert "the whole VPC" in text and "3 other instances" in text
    assert network.other_instance in text  # every instance in the VPC is hit
    incident = approve_twice(bot, card)
    assert incident.status == "contained", incident.summary
    after = routes(world.vpc_id)
    assert not any(gw.startswith("igw-") for rs in after.values() for _, _, gw in rs)
    attached = ec2().describe_internet_gateways(InternetGatewayIds=[network.igw])
    assert attached["InternetGateways"][0]["Attachments"]  # the gateway stays attached
    assert release(bot, incident).status == "released"
    assert routes(world.vpc_id) == before


def test_igw_removes_ipv6_egress_only_routes_and_names_the_ways_out_it_leaves(
        bot: RunningBot, world: sandbox_world.World, network: sandbox_world.Network,
        fake_slack: FakeSlack) -> None:
    """An egress-only internet gateway's ::/0 route goes too; a default route through a
    NAT gateway is not contained by `igw`: the card and the thread say so by id."""
    eigw = ec2().create_egress_only_internet_gateway(VpcId=world.vpc_id)[
        "EgressOnlyInternetGateway"]["EgressOnlyInternetGatewayId"]
    other = ec2().create_route_table(VpcId=world.vpc_id)["RouteTable"]["RouteTableId"]
    ec2().create_route(RouteTableId=other, DestinationIpv6CidrBlock="::/0",
                       EgressOnlyInternetGatewayId=eigw)
    nat_table = ec2().create_route_table(VpcId=world.vpc_id)["RouteTable"]["RouteTableId"]
    alloc = ec2().allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2().create_nat_gateway(SubnetId=network.other_subnet,
                                   AllocationId=alloc)["NatGateway"]["NatGatewayId"]
    ec2().create_route(RouteTableId=nat_table, DestinationCidrBlock="0.0.0.0/0",
                       NatGatewayId=nat)
    before = routes(world.vpc_id)
    card = request(bot, world.instance_id, "igw data leaving the VPC")
    text = card_text(card)
    assert "Not contained through" in text and nat in text
    incident = approve_twice(bot, card)
    assert incident.status == "contained", incident.summary
    after = routes(world.vpc_id)
    gone = [gw for rs in after.values() for _, _, gw in rs if gw.startswith(("igw-", "eigw-"))]
    assert gone == []
    assert ("0.0.0.0/0", "", nat) in after[nat_table]  # not Cordon's to remove
    step = next(m.text for m in fake_slack.thread(CHANNEL, card.ts)
                if m.text.startswith("✅ *remove-internet-routes*"))
    assert eigw in step and f"{nat_table}: 0.0.0.0/0 → {nat}" in step
    assert release(bot, incident).status == "released"
    assert routes(world.vpc_id) == before
