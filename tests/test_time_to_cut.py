"""The path from the Approve click to the sealed group, through the real HTTP endpoint
against moto's server: what is made ready when the card is made (and nothing of the
instance changed before approval), which calls lie in front of the first move, the
order that safety needs (the seal only once the detach has answered), and what changed
between the card and the click. Every AWS request is given a fixed latency and its
interval recorded; the tests count round trips and look at the order of the calls,
never at seconds."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from playbooks.models import Incident
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack, Message
from sandbox.harness import RunningBot, start_bot, wait_for
from sandbox.rounds import Call, Recorder, seal_moves, sequential_round_trips
from tests.conftest import AwsTrace, aws_client, settle_card

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"
LATENCY = 0.2


@pytest.fixture
def recorder() -> Recorder:
    return Recorder(LATENCY)


@pytest.fixture
def timed_bot(fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
              aws_trace: AwsTrace, recorder: Recorder) -> Iterator[RunningBot]:
    running = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                        session_factory=recorder.factory(aws_trace.session), warm=True)
    running.deps.warmed.wait(30)
    yield running
    running.stop()
    assert aws_trace.undeclared() == []


def isolation_groups(vpc_id: str) -> dict[str, dict[str, Any]]:
    found = aws_client("ec2").describe_security_groups(Filters=[
        {"Name": "vpc-id", "Values": [vpc_id]},
        {"Name": "tag:cordon:managed", "Values": ["true"]}])["SecurityGroups"]
    return {g["GroupName"]: g for g in found}


def request(bot: RunningBot, world: sandbox_world.World, playbook: str) -> Message:
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} {playbook} miner on port 3333")
    return wait_for(lambda: bot.slack.fake.channel_messages(CHANNEL))[0]


def approve(bot: RunningBot, recorder: Recorder, card: Message) -> tuple[Incident, list[Call]]:
    clicked = time.monotonic()
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = settle_card(bot, card.ts)
    return incident, recorder.since(clicked)


def sealed_group(bot: RunningBot, incident: Incident) -> str:
    step = next(s for s in bot.deps.store.steps(incident.id)
                if s.name == "isolate-security-groups")
    return str(step.captured["sealed_group"])


def moves_to(calls: list[Call], group: str) -> list[Call]:
    return [c for c in calls if c.operation == "ModifyNetworkInterfaceAttribute"
            and c.params.get("Groups") == [group]]


def test_isolate_makes_the_groups_ready_at_card_time_and_cuts_in_two_round_trips(
        timed_bot: RunningBot, world: sandbox_world.World, recorder: Recorder) -> None:
    before = sandbox_world.groups_by_eni(world.instance_id)
    assert isolation_groups(world.vpc_id) == {}
    card = request(timed_bot, world, "isolate")
    # Cordon's own groups exist before approval; nothing of the instance has changed.
    groups = isolation_groups(world.vpc_id)
    assert set(groups) == {"cordon-open", "cordon-sealed"}
    assert sandbox_world.groups_by_eni(world.instance_id) == before
    assert "Isolation groups ready" in json.dumps(card.blocks)
    incident, calls = approve(timed_bot, recorder, card)
    assert incident.status == "contained"
    sealed = groups["cordon-sealed"]["GroupId"]
    opened = moves_to(calls, groups["cordon-open"]["GroupId"])
    seals = seal_moves(calls, sealed)
    assert len(opened) == len(seals) == len(before) == 2
    # Nothing answered after the click before the first move went out: no describe, no
    # group creation in front of the cut.
    first = min(c.start for c in opened)
    assert [c.operation for c in calls if c.end <= first] == []
    assert not [c for c in calls if c.operation == "CreateSecurityGroup"]
    done = max(c.end for c in seals)
    assert sequential_round_trips(calls, done) == 2
    now = sandbox_world.groups_by_eni(world.instance_id)
    assert all(v == [f"cordon-sealed ({sealed})"] for v in now.values())


def test_full_on_a_fleet_member_sends_its_first_changes_in_one_round_and_seals_after_the_detach(
        timed_bot: RunningBot, world: sandbox_world.World, recorder: Recorder) -> None:
    sandbox_world.join_fleet(world)
    card = request(timed_bot, world, "full")
    incident, calls = approve(timed_bot, recorder, card)
    assert incident.status == "contained"
    sealed = sealed_group(timed_bot, incident)
    seals = seal_moves(calls, sealed)
    assert len(seals) == 2
    detach = [c for c in calls if c.operation == "DetachInstances"]
    assert len(detach) == 1
    # Safety's order: no seal before the detach answered (the group would replace it).
    assert min(c.start for c in seals) >= detach[0].end
    # The open moves, the protections, the detach and the deregistrations went out
    # together: none of them waited for another's answer.
    first_round = [c for c in calls if c.operation in (
        "DetachInstances", "ModifyInstanceAttribute", "DeregisterTargets",
        "DeregisterInstancesFromLoadBalancer") or (
        c.operation == "ModifyNetworkInterfaceAttribute" and c.params.get("Groups")
        and c.params["Groups"] != [sealed])]
    assert {c.operation for c in first_round} >= {"DetachInstances", "ModifyInstanceAttribute",
                                                  "DeregisterTargets"}
    assert sequential_round_trips(first_round, max(c.end for c in first_round)) == 1
    # Nothing was described between the click and that round.
    first = min(c.start for c in first_round)
    assert [c.operation for c in calls if c.end <= first] == []
    assert sequential_round_trips(calls, max(c.end for c in seals)) <= 3
    # Every verify came after the cut, and saw what it expected.
    steps = {s.name: s for s in timed_bot.deps.store.steps(incident.id)}
    for name in ("protect-evidence", "detach-from-auto-scaling", "isolate-security-groups"):
        assert steps[name].status == "succeeded" and steps[name].details["verified"]
    describes = [c for c in calls if c.operation in ("DescribeInstanceAttribute",
                                                     "DescribeAutoScalingInstances")]
    assert describes and min(c.start for c in describes) >= min(c.end for c in seals)


def test_an_eni_attached_after_the_card_is_cut_too_and_recorded_for_the_release(
        timed_bot: RunningBot, world: sandbox_world.World, recorder: Recorder) -> None:
    card = request(timed_bot, world, "isolate")
    ec2 = aws_client("ec2")
    late = ec2.create_network_interface(SubnetId=world.subnet_id, Groups=[world.web_group],
                                        )["NetworkInterface"]["NetworkInterfaceId"]
    ec2.attach_network_interface(NetworkInterfaceId=late, InstanceId=world.instance_id,
                                 DeviceIndex=2)
    incident, _ = approve(timed_bot, recorder, card)
    assert incident.status == "contained"
    sealed = sealed_group(timed_bot, incident)
    now = sandbox_world.groups_by_eni(world.instance_id)
    assert len(now) == 3 and all(v == [f"cordon-sealed ({sealed})"] for v in now.values())
    step = next(s for s in timed_bot.deps.store.steps(incident.id)
                if s.name == "isolate-security-groups")
    recorded = {e["id"]: [g["id"] for g in e["groups"]] for e in step.captured["enis"]}
    assert recorded[late] == [world.web_group]
    assert f"attached since the card, cut too: {late}" in step.summary
    # The release puts it back on its own group, with the others.
    release = timed_bot.deps.cordon.open_release(incident.id, "false alarm", DANA, CHANNEL)
    timed_bot.deps.cordon.decide(release.id, LEE, approve=True)
    wait_for(lambda: (timed_bot.deps.store.get(release.id) or release).status == "released",
             timeout=60)
    back = sandbox_world.groups_by_eni(world.instance_id)
    assert back[late] == [f"web ({world.web_group})"]


def test_a_rule_added_to_the_sealed_group_after_the_card_is_removed(
        timed_bot: RunningBot, world: sandbox_world.World, recorder: Recorder) -> None:
    card = request(timed_bot, world, "isolate")
    sealed = isolation_groups(world.vpc_id)["cordon-sealed"]["GroupId"]
    aws_client("ec2").authorize_security_group_ingress(GroupId=sealed, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    incident, _ = approve(timed_bot, recorder, card)
    assert incident.status == "contained"
    rules = sandbox_world.group_rules(sealed)
    assert rules == ([], [])
    step = next(s for s in timed_bot.deps.store.steps(incident.id)
                if s.name == "isolate-security-groups")
    assert "cordon-sealed had drifted since the card" in step.summary


def test_isolation_groups_deleted_after_the_card_are_made_again(
        timed_bot: RunningBot, world: sandbox_world.World, recorder: Recorder) -> None:
    card = request(timed_bot, world, "isolate")
    old = isolation_groups(world.vpc_id)
    for group in old.values():
        aws_client("ec2").delete_security_group(GroupId=group["GroupId"])
    incident, _ = approve(timed_bot, recorder, card)
    assert incident.status == "contained"
    new = isolation_groups(world.vpc_id)
    sealed = new["cordon-sealed"]["GroupId"]
    assert sealed != old["cordon-sealed"]["GroupId"]
    now = sandbox_world.groups_by_eni(world.instance_id)
    assert all(v == [f"cordon-sealed ({sealed})"] for v in now.values())
    step = next(s for s in timed_bot.deps.store.steps(incident.id)
                if s.name == "isolate-security-groups")
    assert "made again" in step.summary and step.details["sealed_group"] == sealed


def test_an_eni_moved_to_another_instance_since_the_card_is_put_back_not_sealed(
        timed_bot: RunningBot, world: sandbox_world.World, recorder: Recorder) -> None:
    """A floating ENI (a failover pattern) moved to the standby after the card: it is
    not the compromised instance's any more, so it is not cut, nor restored on release."""
    card = request(timed_bot, world, "isolate")
    ec2 = aws_client("ec2")
    eni = ec2.describe_network_interfaces(NetworkInterfaceIds=[world.second_eni])[
        "NetworkInterfaces"][0]
    ec2.detach_network_interface(AttachmentId=eni["Attachment"]["AttachmentId"], Force=True)
    ec2.attach_network_interface(NetworkInterfaceId=world.second_eni,
                                 InstanceId=world.bystander_id, DeviceIndex=1)
    incident, _ = approve(timed_bot, recorder, card)
    assert incident.status == "contained"
    sealed = sealed_group(timed_bot, incident)
    mine = sandbox_world.groups_by_eni(world.instance_id)
    assert list(mine.values()) == [[f"cordon-sealed ({sealed})"]]
    standby = sandbox_world.groups_by_eni(world.bystander_id)
    assert standby[world.second_eni] == [f"mgmt ({world.mgmt_group})"]
    step = next(s for s in timed_bot.deps.store.steps(incident.id)
                if s.name == "isolate-security-groups")
    assert world.second_eni not in [e["id"] for e in step.captured["enis"]]
    assert f"{world.second_eni} was moved to another instance since the card: put back" \
        in step.summary


def test_a_slow_detach_does_not_keep_the_enis_on_the_open_group(
        timed_bot: RunningBot, world: sandbox_world.World, recorder: Recorder,
        aws_trace: AwsTrace) -> None:
    """The detach takes 3 s to answer (throttled, or settling): each ENI goes back to its
    own groups once SEAL_WAIT has passed, waits there, and is cut — open, then sealed —
    once the detach has answered. It never waits on the allow-all group."""
    from handlers.isolation import SEAL_WAIT

    sandbox_world.join_fleet(world)
    before = sandbox_world.groups_by_eni(world.instance_id)
    aws_trace.delay["DetachInstances"] = 3.0
    card = request(timed_bot, world, "full")
    incident, calls = approve(timed_bot, recorder, card)
    assert incident.status == "contained"
    sealed = sealed_group(timed_bot, incident)
    detach = next(c for c in calls if c.operation == "DetachInstances")
    assert detach.end - detach.start >= 3.0 > SEAL_WAIT
    own = {e["id"]: [g["id"] for g in e["groups"]] for e in next(
        s for s in timed_bot.deps.store.steps(incident.id)
        if s.name == "isolate-security-groups").captured["enis"]}
    assert len(own) == len(before) == 2
    for eni, groups in own.items():
        moves = [c for c in calls if c.operation == "ModifyNetworkInterfaceAttribute"
                 and c.params.get("NetworkInterfaceId") == eni and "Groups" in c.params]
        kinds = ["sealed" if c.params["Groups"] == [sealed] else
                 "own" if c.params["Groups"] == groups else "open" for c in moves]
        assert kinds == ["open", "own", "open", "sealed"], (eni, kinds)
        back, again = moves[1], moves[2]
        assert back.start < detach.end <= again.start  # back while it waited; cut after
    assert all(v == [f"cordon-sealed ({sealed})"]
               for v in sandbox_world.groups_by_eni(world.instance_id).values())


def _moves(calls: list[Call], eni: str, names: dict[str, str]) -> list[str]:
    """The groups each move of this ENI sent it to, by name."""
    return [",".join(names.get(g, g) for g in c.params["Groups"]) for c in calls
            if c.operation == "ModifyNetworkInterfaceAttribute"
            and c.params.get("NetworkInterfaceId") == eni and "Groups" in c.params]


def test_cordon_open_stripped_between_card_and_click_is_restored_and_crossed_again(
        timed_bot: RunningBot, world: sandbox_world.World, recorder: Recorder) -> None:
    """An auto-remediation strips 0.0.0.0/0 from cordon-open after the card: the first
    crossing converted nothing to untracked. The rules are put back and every ENI crosses
    again, open → sealed; the step says so."""
    card = request(timed_bot, world, "isolate")
    groups = isolation_groups(world.vpc_id)
    opened = groups["cordon-open"]
    ec2 = aws_client("ec2")
    ec2.revoke_security_group_ingress(GroupId=opened["GroupId"],
                                      IpPermissions=opened["IpPermissions"])
    ec2.revoke_security_group_egress(GroupId=opened["GroupId"],
                                     IpPermissions=opened["IpPermissionsEgress"])
    incident, calls = approve(timed_bot, recorder, card)
    assert incident.status == "contained", incident.summary
    names = {g["GroupId"]: name for name, g in groups.items()}
    for eni in sandbox_world.groups_by_eni(world.instance_id):
        assert _moves(calls, eni, names) == ["cordon-open", "cordon-sealed"] * 2, eni
    ingress, egress = sandbox_world.group_rules(opened["GroupId"])
    assert {"0.0.0.0/0"} <= {r["CidrIp"] for p in ingress for r in p.get("IpRanges", [])}
    assert {"0.0.0.0/0"} <= {r["CidrIp"] for p in egress for r in p.get("IpRanges", [])}
    step = next(s for s in timed_bot.deps.store.steps(incident.id)
                if s.name == "isolate-security-groups")
    assert "cordon-open had drifted" in step.summary and "crossed it again" in step.summary


def test_an_eni_tightened_after_the_card_goes_back_to_its_tighter_groups(
        timed_bot: RunningBot, world: sandbox_world.World, recorder: Recorder,
        aws_trace: AwsTrace) -> None:
    """Someone takes `web` off the first ENI after the card; the detach is slow, so the ENI
    waits on its own groups: those of the click (mgmt only), never the card's looser ones.
    The release puts back the click's groups too."""
    sandbox_world.join_fleet(world)
    card = request(timed_bot, world, "full")
    ec2 = aws_client("ec2")
    first = next(iter(sandbox_world.groups_by_eni(world.instance_id)))
    ec2.modify_network_interface_attribute(NetworkInterfaceId=first, Groups=[world.mgmt_group])
    aws_trace.delay["DetachInstances"] = 3.0
    # The describe sent beside the first moves reads the ENIs before those moves land.
    aws_trace.delay["ModifyNetworkInterfaceAttribute"] = 0.3
    incident, calls = approve(timed_bot, recorder, card)
    assert incident.status == "contained", incident.summary
    groups = isolation_groups(world.vpc_id)
    names = {g["GroupId"]: name for name, g in groups.items()}
    names.update({world.mgmt_group: "mgmt", world.web_group: "web"})
    assert _moves(calls, first, names) == ["cordon-open", "mgmt", "cordon-open",
                                           "cordon-sealed"]
    timed_bot.slack.command(DANA, CHANNEL, f"release {incident.id} tabletop over")
    release_card = wait_for(lambda: timed_bot.slack.fake.channel_messages(CHANNEL)[1:])[0]
    timed_bot.slack.click_button(LEE, CHANNEL, release_card.ts, "Approve")
    assert settle_card(timed_bot, release_card.ts).status == "released"
    assert sandbox_world.groups_by_eni(world.instance_id)[first] == [
        f"mgmt ({world.mgmt_group})"]
