"""One card for many instances: `/contain asg=…`, `/contain tag:K=V`, several ids. Each
instance is an incident of its own; the card's approval starts them all; the thread says
one line per instance, not one per step. Through the real endpoint against moto."""

from __future__ import annotations

import json
from typing import Any

from playbooks.store import CONTAINED, DENIED
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, wait_for
from tests.conftest import aws_client, settle_card
from tests.test_tracked_flows import sealed_group

CHANNEL = "C0INCIDENT"
DANA, LEE, ALEX = "U0DANA", "U0LEE", "U0ALEX"


def _asg_of_three(world: sandbox_world.World) -> tuple[str, list[str]]:
    fleet = sandbox_world.join_fleet(world)
    more = sandbox_world.add_instances(world, 2, name="web-prod")
    aws_client("autoscaling").attach_instances(InstanceIds=more,
                                               AutoScalingGroupName=fleet.asg)
    return fleet.asg, [world.instance_id, *more]


def _all_sealed(world: sandbox_world.World, ids: list[str]) -> bool:
    sealed = f"cordon-sealed ({sealed_group(world.vpc_id)})"
    return all(g == [sealed] for i in ids
               for g in sandbox_world.groups_by_eni(i).values())


def _thread(fake: FakeSlack, card: Any) -> list[str]:
    return [m.text for m in fake.thread(CHANNEL, card.ts)]


def test_an_auto_scaling_group_is_contained_from_one_card(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    asg, ids = _asg_of_three(world)
    assert bot.slack.command(DANA, CHANNEL, f"asg={asg} isolate worm across the group")[0] \
        == 200
    (card,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    shown = str(card.blocks)
    assert "3 instances" in shown and all(i in shown for i in ids)
    assert "6 network interfaces" in shown
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    fleet = settle_card(bot, card.ts, timeout=120)
    assert fleet.kind == "fleet" and fleet.status == CONTAINED, fleet.summary
    members = bot.deps.store.members(fleet.id)
    assert sorted(m.target_id for m in members) == sorted(ids)
    assert {m.status for m in members} == {CONTAINED}
    assert all(m.decided_by == LEE for m in members)
    assert _all_sealed(world, ids)
    # The thread: the start, one line per instance, the end — no step of any member.
    thread = wait_for(lambda: (t := _thread(fake_slack, card)) and "Fleet" in t[-1] and t,
                      timeout=30)
    assert thread[0].startswith("▶️ Approved by")
    # Lines that wait together go as one reply (Slack's rate per channel).
    lines = [line for reply in thread[1:-1] for line in reply.split("\n")]
    assert len(lines) == 3 and sorted(next(i for i in ids if i in line) for line in lines) \
        == sorted(ids)
    assert not any("isolate-security-groups" in t for t in thread)
    assert "3 contained" in thread[-1]
    # Each instance is an incident of its own: its status reads on its own.
    member = next(m for m in members if m.target_id == ids[1])
    bot.slack.command(DANA, CHANNEL, f"status {ids[1]}")
    said = wait_for(lambda: [t for t in fake_slack.ephemerals_for(DANA) if member.id in t],
                    timeout=20)
    assert "contained" in said[0]


def test_five_ids_need_two_approvers_and_a_denial_changes_nothing(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    ids = [world.instance_id, *sandbox_world.add_instances(world, 4)]
    before = {i: sandbox_world.groups_by_eni(i) for i in ids}
    bot.slack.command(DANA, CHANNEL, " ".join(ids) + " isolate stolen deploy key")
    (card,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    fleet = wait_for(lambda: next((i for i in bot.deps.store.recent(10)
                                   if i.card_ts == card.ts), None))
    assert fleet.approvals_required == 2
    assert "needs 2 different approvers" in str(wait_for(
        lambda: fake_slack.channel_messages(CHANNEL))[0].blocks)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Deny")
    denied = settle_card(bot, card.ts)
    assert denied.status == DENIED
    assert {m.status for m in bot.deps.store.members(fleet.id)} == {DENIED}
    assert {i: sandbox_world.groups_by_eni(i) for i in ids} == before


def test_a_tag_finds_its_instances_and_leaves_out_one_already_asked_for(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    ids = sandbox_world.add_instances(world, 3, name="billing", tags={"app": "billing"})
    bot.slack.command(DANA, CHANNEL, f"{ids[0]} isolate asked for on its own first")
    (single,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    bot.slack.command(DANA, CHANNEL, "tag:app=billing isolate worm in billing")
    fleet_card = wait_for(lambda: fake_slack.channel_messages(CHANNEL)[1:], timeout=30)[0]
    shown = str(fleet_card.blocks)
    assert "2 instances" in shown and "Left out" in shown and ids[0] in shown
    bot.slack.click_button(ALEX, CHANNEL, fleet_card.ts, "Approve")
    fleet = settle_card(bot, fleet_card.ts, timeout=120)
    assert fleet.status == CONTAINED
    assert _all_sealed(world, ids[1:])
    assert not _all_sealed(world, ids[:1])  # its own card is still waiting
    assert single.ts != fleet_card.ts


def test_an_unknown_group_is_said_and_nothing_is_made(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    bot.slack.command(DANA, CHANNEL, "asg=no-such-group isolate worm")
    said = wait_for(lambda: fake_slack.ephemerals_for(DANA), timeout=20)
    assert any("no Auto Scaling group" in t and "no-such-group" in t for t in said)
    assert fake_slack.channel_messages(CHANNEL) == []
    assert bot.deps.store.recent() == []


def test_a_fleet_is_released_from_one_card_each_instance_from_its_own_record(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    ids = [world.instance_id, *sandbox_world.add_instances(world, 2)]
    before = {i: sandbox_world.groups_by_eni(i) for i in ids}
    bot.slack.command(DANA, CHANNEL, " ".join(ids) + " isolate worm")
    (card,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    fleet = settle_card(bot, card.ts, timeout=120)
    assert fleet.status == CONTAINED and _all_sealed(world, ids)
    # One instance is released on its own first: the fleet's release leaves it out.
    bot.slack.command(DANA, CHANNEL, f"release {ids[2]} false positive")
    own = wait_for(lambda: fake_slack.channel_messages(CHANNEL)[1:], timeout=30)[0]
    bot.slack.click_button(LEE, CHANNEL, own.ts, "Approve")
    assert settle_card(bot, own.ts).status == "released"
    bot.slack.command(DANA, CHANNEL, f"release {fleet.id} tabletop over")
    release_card = wait_for(lambda: fake_slack.channel_messages(CHANNEL)[2:], timeout=30)[0]
    shown = str(release_card.blocks)
    assert "Fleet release request" in shown and "2 instances" in shown and "Left out" in shown
    bot.slack.click_button(LEE, CHANNEL, release_card.ts, "Approve")
    release = settle_card(bot, release_card.ts, timeout=120)
    assert release.status == "released", release.summary
    assert {i: sandbox_world.groups_by_eni(i) for i in ids} == before
    assert bot.deps.store.get(fleet.id).status == "released"  # type: ignore[union-attr]
    members = bot.deps.store.members(release.id)
    assert sorted(m.parent_id or "" for m in members) == sorted(
        m.id for m in bot.deps.store.members(fleet.id) if m.target_id != ids[2])


def test_a_fleet_behind_a_nat_gateway_is_cut_with_few_blocks_and_released(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    """Six instances whose flows leave through the NAT gateway: their addresses are denied
    on the NAT subnet's ACL with fewer entries than addresses, blocks that hold no other
    instance's address (the bystander in their subnet stays allowed); the fleet's release
    deletes every block."""
    from handlers.tracked_flows import decides
    from tests.test_tracked_flows import acl_of, address, nat_layout

    layout = nat_layout(world)
    before = acl_of(layout["public"])["Entries"]
    ids = [world.instance_id, *sandbox_world.add_instances(world, 5)]
    addresses = [a for i in ids for a in _private_addresses(i)]
    bot.slack.command(DANA, CHANNEL, " ".join(ids) + " isolate reverse shells via the NAT")
    (card,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    assert "Flows no security group ends" in str(card.blocks)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    bot.slack.click_button(ALEX, CHANNEL, card.ts, "Approve")  # six: two approvers
    fleet = settle_card(bot, card.ts, timeout=120)
    assert fleet.status == CONTAINED, fleet.summary
    acl = acl_of(layout["public"])
    added = [e for e in acl["Entries"] if e not in before]
    inbound = [e for e in added if not e["Egress"]]
    assert 0 < len(inbound) < len(addresses) and len(added) == 2 * len(inbound)
    # Evaluated as AWS evaluates it: every member's address denied both ways, the
    # bystander's allowed.
    for a in addresses:
        assert decides(acl, False, a) == decides(acl, True, a) == "deny", a
    bystander = address(world.bystander_id)
    assert decides(acl, False, bystander) == decides(acl, True, bystander) == "allow"
    bot.slack.command(DANA, CHANNEL, f"release {fleet.id} over")
    release_card = wait_for(lambda: fake_slack.channel_messages(CHANNEL)[1:], timeout=30)[0]
    bot.slack.click_button(LEE, CHANNEL, release_card.ts, "Approve")
    bot.slack.click_button(ALEX, CHANNEL, release_card.ts, "Approve")
    released = settle_card(bot, release_card.ts, timeout=120)
    assert released.status == "released", [
        (m.summary, [(s.name, s.error_message) for s in bot.deps.store.steps(m.id)
                     if s.status != "succeeded"]) for m in bot.deps.store.members(released.id)]
    assert acl_of(layout["public"])["Entries"] == before


def _private_addresses(instance_id: str) -> list[str]:
    inst = aws_client("ec2").describe_instances(InstanceIds=[instance_id])[
        "Reservations"][0]["Instances"][0]
    return [f"{a['PrivateIpAddress']}/32" for e in inst["NetworkInterfaces"]
            for a in e.get("PrivateIpAddresses", [])]


def test_the_form_takes_a_fleet_and_refuses_a_subnet_wide_playbook_for_it(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    from tests.test_slack_surfaces import open_form

    ids = [world.instance_id, *sandbox_world.add_instances(world, 1)]
    view_id = open_form(bot, fake_slack)
    _, body = bot.slack.submit_view(DANA, view_id, {
        "target": ", ".join(ids), "playbook": "nacl", "reason": "worm"})
    assert "subnet-wide" in json.loads(body)["errors"]["playbook"]
    status, body = bot.slack.submit_view(DANA, view_id, {
        "target": ", ".join(ids), "playbook": "isolate", "reason": "worm"})
    assert status == 200 and json.loads(body)["response_action"] == "update"
    (card,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    assert "2 instances" in str(card.blocks)
    fleet = wait_for(lambda: next((i for i in bot.deps.store.recent(5)
                                   if i.card_ts == card.ts), None))
    assert fleet.kind == "fleet" and fleet.requester == DANA


def test_a_fleet_on_one_role_shares_one_revocation_statement(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    """Fifty instances of one role would need fifty statements, more than IAM's 10,240
    characters hold: a fleet's members write one, each adding its ARN (under the role's
    lock), its cut-off the latest of theirs."""
    ids = [world.instance_id, *sandbox_world.add_instances(world, 4)]
    bot.slack.command(DANA, CHANNEL, " ".join(ids) + " full stolen deploy key")
    (card,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    bot.slack.click_button(ALEX, CHANNEL, card.ts, "Approve")
    fleet = settle_card(bot, card.ts, timeout=180)
    assert fleet.status == CONTAINED, [(s.name, s.error_code, s.error_message)
                                       for m in bot.deps.store.members(fleet.id)
                                       for s in bot.deps.store.steps(m.id)
                                       if s.status == "failed"][:3]
    document = aws_client("iam").get_role_policy(
        RoleName="web-prod", PolicyName="cordon-revocations")["PolicyDocument"]
    (statement,) = document["Statement"]
    assert statement["Sid"].startswith("CordonRevokeFleet")
    assert statement["Condition"]["StringEquals"]["ec2:SourceInstanceARN"] == sorted(
        f"arn:aws:ec2:us-east-1:123456789012:instance/{i}" for i in ids)
    cutoffs = [(s.details or {}).get("issued_before") for m in bot.deps.store.members(fleet.id)
               for s in bot.deps.store.steps(m.id) if s.name == "remove-instance-profile"]
    assert statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"] == max(cutoffs)


def test_a_fleet_that_ends_partially_is_retried_from_its_card(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: Any) -> None:
    ids = [world.instance_id, *sandbox_world.add_instances(world, 1)]
    aws_trace.faults["CreateTags"] = [(400, "UnauthorizedOperation", "not now")]
    bot.slack.command(DANA, CHANNEL, " ".join(ids) + " isolate worm")
    (card,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    fleet = settle_card(bot, card.ts, timeout=120)
    assert fleet.status == "partially contained"
    (failed,) = [m for m in bot.deps.store.members(fleet.id) if m.status != CONTAINED]
    assert "Retry" in str(wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0].blocks)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Retry")
    wait_for(lambda: bot.deps.store.get(fleet.id).status == CONTAINED,  # type: ignore[union-attr]
             timeout=60)
    assert bot.deps.store.get(failed.id).status == CONTAINED  # type: ignore[union-attr]
    assert _all_sealed(world, ids)


def test_a_member_and_its_fleet_export_into_the_fleets_thread(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    ids = [world.instance_id, *sandbox_world.add_instances(world, 1)]
    bot.slack.command(DANA, CHANNEL, " ".join(ids) + " isolate worm")
    (card,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    fleet = settle_card(bot, card.ts, timeout=120)
    member = bot.deps.store.members(fleet.id)[0]
    bot.slack.command(DANA, CHANNEL, f"export {member.target_id}")
    bot.slack.command(DANA, CHANNEL, f"export {fleet.id}")

    def files() -> dict[str, str]:
        return {f["name"]: f["content"] for m in fake_slack.thread(CHANNEL, card.ts)
                for f in m.files if "-record" in f["name"]}

    found = wait_for(lambda: len(files()) == 4 and files(), timeout=30)
    assert json.loads(found[f"{member.id}-record.json"])["incident"] == member.id
    records = json.loads(found[f"{fleet.id}-fleet-record.json"])
    assert records[0]["incident"] == fleet.id
    assert sorted(r["incident"] for r in records[1:]) == sorted(
        m.id for m in bot.deps.store.members(fleet.id))
    # Each export has its chart: the member's steps, the fleet's members.
    charts = wait_for(lambda: len(c := {f["name"]: f["content"]
                                        for m in fake_slack.thread(CHANNEL, card.ts)
                                        for f in m.files if f["name"].endswith(".png")}) == 2
                      and c, timeout=30)
    assert sorted(charts) == sorted([f"{member.id}-timeline.png", f"{fleet.id}-timeline.png"])
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in charts.values())


def test_a_fleet_whose_last_member_ended_unsaid_is_settled_by_the_next_sweep(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    """The process died between the last member's end and the fleet's: the fleet stays
    running until the next takeover pass looks, then ends as its members did."""
    from sqlalchemy import update

    from playbooks.models import Incident

    ids = [world.instance_id, *sandbox_world.add_instances(world, 1)]
    bot.slack.command(DANA, CHANNEL, " ".join(ids) + " isolate worm")
    (card,) = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    fleet = settle_card(bot, card.ts, timeout=120)
    with bot.deps.store.session() as s:  # as it was before the fleet's end was written
        s.execute(update(Incident).where(Incident.id == fleet.id).values(
            status="running", finished_at=None))
    bot.deps.worker.resume_interrupted()
    assert bot.deps.store.get(fleet.id).status == CONTAINED  # type: ignore[union-attr]
