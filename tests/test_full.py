"""The `full` playbook, evidence, retry and release, end to end through the real HTTP
endpoint, against moto's server (an instance in a real moto Auto Scaling group, target
group and classic load balancer) and both databases. moto evaluates neither IAM
conditions nor connection tracking: the tests assert on the stored state."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest

from bot.scheduler import sweep
from playbooks.models import Incident
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack, Message
from sandbox.harness import RunningBot, wait_for
from tests.conftest import AwsTrace, aws_client, settle_card

CHANNEL = "C0INCIDENT"
DANA, LEE, KIM = "U0DANA", "U0LEE", "U0KIM"


def client(service: str) -> Any:
    return aws_client(service)


@pytest.fixture
def fleet(world: sandbox_world.World) -> sandbox_world.Fleet:
    return sandbox_world.join_fleet(world)


def instance_state(world: sandbox_world.World, fleet: sandbox_world.Fleet) -> dict[str, Any]:
    """Everything the full playbook changes and a release must put back."""
    ec2, iam = client("ec2"), client("iam")
    inst = ec2.describe_instances(InstanceIds=[world.instance_id])[
        "Reservations"][0]["Instances"][0]

    def attr(name: str, key: str) -> Any:
        return ec2.describe_instance_attribute(InstanceId=world.instance_id,
                                               Attribute=name)[key]["Value"]

    assoc = ec2.describe_iam_instance_profile_associations(Filters=[
        {"Name": "instance-id", "Values": [world.instance_id]},
        {"Name": "state", "Values": ["associated"]}])["IamInstanceProfileAssociations"]
    health = client("elbv2").describe_target_health(TargetGroupArn=fleet.target_group)
    clb = client("elb").describe_load_balancers(LoadBalancerNames=[fleet.classic_elb])
    asg = client("autoscaling").describe_auto_scaling_instances(InstanceIds=[world.instance_id])
    return {
        "enis": {e["NetworkInterfaceId"]: sorted(g["GroupId"] for g in e["Groups"])
                 for e in inst["NetworkInterfaces"]},
        "profile": [a["IamInstanceProfile"]["Arn"] for a in assoc],
        "role_policies": iam.list_role_policies(RoleName="web-prod")["PolicyNames"],
        "termination_protection": attr("disableApiTermination", "DisableApiTermination"),
        "stop_protection": attr("disableApiStop", "DisableApiStop"),
        "shutdown": attr("instanceInitiatedShutdownBehavior",
                         "InstanceInitiatedShutdownBehavior"),
        "delete_on_termination": {m["DeviceName"]: m["Ebs"]["DeleteOnTermination"]
                                  for m in inst["BlockDeviceMappings"]},
        "asg": [a["AutoScalingGroupName"] for a in asg["AutoScalingInstances"]],
        "target_group": [(d["Target"]["Id"], d["Target"].get("Port"))
                         for d in health["TargetHealthDescriptions"]
                         if d["TargetHealth"]["State"] not in ("draining", "unused")],
        "classic_elb": [i["InstanceId"] for i in clb["LoadBalancerDescriptions"][0]["Instances"]],
    }


def tags(resource: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in client("ec2").describe_tags(
        Filters=[{"Name": "resource-id", "Values": [resource]}])["Tags"]}


def contain(bot: RunningBot, world: sandbox_world.World, text: str = "miner on port 3333"
            ) -> tuple[Message, Incident]:
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} {text}")
    card = wait_for(lambda: bot.slack.fake.channel_messages(CHANNEL))[0]
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    return card, settled(bot, card)


def settled(bot: RunningBot, card: Message) -> Incident:
    return settle_card(bot, card.ts)  # type: ignore[no-any-return]


def thread(fake: FakeSlack, card: Message) -> list[str]:
    return [m.text for m in fake.thread(CHANNEL, card.ts)]


def test_full_is_the_default_and_contains_everything(
        bot: RunningBot, world: sandbox_world.World, fleet: sandbox_world.Fleet,
        fake_slack: FakeSlack, aws_trace: AwsTrace) -> None:
    before = instance_state(world, fleet)
    assert before["asg"] == [fleet.asg] and before["profile"]
    card, incident = contain(bot, world)
    assert incident.playbook == "full" and incident.status == "contained", incident.summary
    after = instance_state(world, fleet)
    (cut,) = [s for s in bot.deps.store.steps(incident.id) if s.name == "isolate-security-groups"]
    sealed = (cut.details or {})["sealed_group"]
    assert after["enis"] == {eni: [sealed] for eni in before["enis"]}
    assert after["asg"] == [] and after["target_group"] == [] and after["classic_elb"] == []
    assert after["profile"] == []
    assert after["termination_protection"] is True and after["stop_protection"] is True
    assert after["shutdown"] == "stop"
    assert not any(after["delete_on_termination"].values())
    # The role denies everything to credentials issued to this instance before the
    # profile was taken away: one statement of the role's Cordon policy.
    policy = client("iam").get_role_policy(RoleName="web-prod", PolicyName="cordon-revocations")
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Sid"].startswith("CordonRevoke" + world.instance_id.replace("-", ""))
    assert statement["Effect"] == "Deny" and statement["Action"] == "*"
    assert statement["Condition"]["StringEquals"]["ec2:SourceInstanceARN"] == (
        f"arn:aws:ec2:us-east-1:123456789012:instance/{world.instance_id}")
    assert "aws:TokenIssueTime" in statement["Condition"]["DateLessThan"]
    # The profile went first; the cut-off is taken after it was gone.
    ops = [op for op, _ in aws_trace.calls]
    assert ops.index("DisassociateIamInstanceProfile") < ops.index("PutRolePolicy")
    (step,) = [st for st in bot.deps.store.steps(incident.id)
               if st.name == "remove-instance-profile"]
    cutoff = statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"]
    assert step.started_at is not None
    assert cutoff > step.started_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    # Evidence: snapshots of every volume and an image, tagged with the incident.
    snaps = client("ec2").describe_snapshots(Filters=[
        {"Name": "tag:cordon:incident", "Values": [incident.id]},
        {"Name": "tag:cordon:evidence", "Values": ["snapshot"]}])["Snapshots"]
    volumes = {m["Ebs"]["VolumeId"] for m in client("ec2").describe_instances(
        InstanceIds=[world.instance_id])["Reservations"][0]["Instances"][0]["BlockDeviceMappings"]}
    assert {s["VolumeId"] for s in snaps} == volumes
    images = client("ec2").describe_images(Owners=["self"], Filters=[
        {"Name": "tag:cordon:incident", "Values": [incident.id]}])["Images"]
    assert len(images) == 1
    assert aws_trace.count("CreateImage", lambda p: p.get("NoReboot") is True) == 1
    final_tags = tags(world.instance_id)
    assert final_tags["cordon:status"] == "contained"
    assert final_tags["cordon:incident"] == incident.id
    assert final_tags["cordon:requested-by"] == DANA and final_tags["cordon:approved-by"] == LEE
    # One reply per step, then the summary.
    replies = thread(fake_slack, card)
    for step in ("tag-instance", "protect-evidence", "detach-from-auto-scaling",
                 "isolate-security-groups", "remove-instance-profile", "capture-evidence",
                 "snapshot-volumes", "create-image", "verify-containment"):
        assert sum(r.startswith(f"✅ *{step}*") for r in replies) == 1, step
    assert any("other instances using the role keep working" in r for r in replies)
    summary = next(r for r in replies if r.startswith("✅ *verify-containment*"))
    assert images[0]["ImageId"] in summary and snaps[0]["SnapshotId"] in summary
    assert replies[-1].startswith("🔒 *Contained*")


def test_evidence_files_are_uploaded_with_their_sha256_and_kept(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    card, incident = contain(bot, world)
    kept = bot.deps.store.evidence(incident.id)
    names = {e.name.split(world.instance_id + "-")[1] for e in kept}
    assert {"describe-instances.json", "console.txt", "prior-state.json"} <= names
    uploads = [m for m in fake_slack.thread(CHANNEL, card.ts) if m.files]
    assert len(uploads) == len(kept)
    for item, message in zip(kept, uploads, strict=True):
        (shared,) = message.files
        assert shared["content"] == item.content
        assert hashlib.sha256(shared["content"]).hexdigest() == item.sha256
        assert item.sha256 in message.text
    described = json.loads(next(e for e in kept if e.name.endswith("describe-instances.json"))
                           .content)
    assert described["Reservations"][0]["Instances"][0]["InstanceId"] == world.instance_id
    prior = json.loads(next(e for e in kept if e.name.endswith("prior-state.json")).content)
    assert {"protect-evidence", "isolate-security-groups"} <= set(prior)
    # moto has no console screenshot: the thread says so and the run went on.
    capture = next(t for t in thread(fake_slack, card) if "*capture-evidence*" in t)
    assert "screenshot unavailable" in capture and incident.status == "contained"


def test_leaving_auto_scaling_comes_before_the_network_cut(
        bot: RunningBot, world: sandbox_world.World, fleet: sandbox_world.Fleet,
        aws_trace: AwsTrace) -> None:
    _, incident = contain(bot, world)
    steps = {s.name: s for s in bot.deps.store.steps(incident.id)}
    sealed = steps["isolate-security-groups"].captured["sealed_group"]
    # The move to cordon-open goes out beside the detach (the timing is held by
    # test_time_to_cut); the seal only once the detach has answered.
    ops = [op if op != "ModifyNetworkInterfaceAttribute" else
           ("seal" if params["Groups"] == [sealed] else "open")
           for op, params in aws_trace.calls
           if op in ("DetachInstances", "DeregisterTargets",
                     "DeregisterInstancesFromLoadBalancer", "ModifyInstanceAttribute")
           or (op == "ModifyNetworkInterfaceAttribute" and "Groups" in params)]
    first_seal = ops.index("seal")
    assert ops.index("DetachInstances") < first_seal
    assert ops.count("open") == 2 and ops.count("seal") == 2
    assert ops.count("ModifyInstanceAttribute") == 4  # the protections
    detach = [p for op, p in aws_trace.calls if op == "DetachInstances"]
    assert detach == [{"InstanceIds": [world.instance_id], "AutoScalingGroupName": fleet.asg,
                       "ShouldDecrementDesiredCapacity": False}]


def test_the_status_tag_is_written_after_the_cut_and_the_limits_are_said(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    """Instance tags can be read from inside the instance: `containing` appears only once
    the network is cut. The card and the thread say what security groups do not cut."""
    card, incident = contain(bot, world)
    assert incident.status == "contained"
    ops = [(op, p) for op, p in aws_trace.calls
           if op in ("CreateTags", "ModifyNetworkInterfaceAttribute")]
    last_move = max(i for i, (op, p) in enumerate(ops)
                    if op == "ModifyNetworkInterfaceAttribute" and "Groups" in p)
    status_tag = next(i for i, (op, p) in enumerate(ops) if op == "CreateTags" and any(
        t["Key"] == "cordon:status" for t in p.get("Tags", [])))
    assert status_tag > last_move
    assert "Security groups do not cut" in json.dumps(card.blocks)
    cut = next(t for t in thread(fake_slack, card) if t.startswith("✅ *isolate-security-groups*"))
    assert "ICMP flows stay tracked" in cut and "VPC resolver" in cut


def test_a_failed_detach_stops_before_the_cut(
        bot: RunningBot, world: sandbox_world.World, fleet: sandbox_world.Fleet,
        fake_slack: FakeSlack, aws_trace: AwsTrace) -> None:
    before = instance_state(world, fleet)
    aws_trace.fail("DetachInstances", "AccessDenied", "not allowed to detach", times=5,
                   status=403)
    card, incident = contain(bot, world)
    assert incident.status == "failed"
    # The move to cordon-open went out alongside the detach; the seal waited for the
    # detach's answer, and on its failure every ENI went back to its own groups.
    steps = {s.name: s for s in bot.deps.store.steps(incident.id)}
    sealed = steps["isolate-security-groups"].captured["sealed_group"]
    assert aws_trace.count("ModifyNetworkInterfaceAttribute",
                           lambda p: p.get("Groups") == [sealed]) == 0
    assert instance_state(world, fleet)["enis"] == before["enis"]
    assert steps["detach-from-auto-scaling"].error_code == "AccessDenied"
    assert steps["isolate-security-groups"].status == "not-run"
    assert "its own groups, as before" in steps["isolate-security-groups"].summary
    replies = thread(fake_slack, card)
    assert any("*detach-from-auto-scaling* failed — `AccessDenied`" in r for r in replies)
    assert "not run: isolate-security-groups" in replies[-1]
    msg = fake_slack.message(CHANNEL, card.ts)
    assert msg is not None and "Retry" in json.dumps(msg.blocks)
    # A release undoes only what was applied: the detach failed, the cut never ran (its
    # prior state was read early), so neither is "undone".
    release = bot.deps.cordon.open_release(incident.id, "false alarm", DANA, CHANNEL)
    undo = [name for name, _ in (release.facts or {})["undo"]]
    assert "undo-detach-from-auto-scaling" not in undo
    assert "undo-isolate-security-groups" not in undo
    assert "undo-protect-evidence" in undo


def test_a_failed_evidence_step_goes_on_and_retry_finishes_it(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    aws_trace.fail("CreateSnapshots", "SnapshotLimitExceeded", "too many snapshots")
    card, incident = contain(bot, world)
    assert incident.status == "partially contained"
    steps = {s.name: s for s in bot.deps.store.steps(incident.id)}
    assert steps["snapshot-volumes"].error_code == "SnapshotLimitExceeded"
    assert steps["create-image"].status == "succeeded"
    assert steps["isolate-security-groups"].status == "succeeded"
    # Someone who is not an approver cannot retry.
    bot.slack.click_button("U0SAM", CHANNEL, card.ts, "Retry")
    assert "not authorised" in wait_for(lambda: fake_slack.ephemerals_for("U0SAM"))[0]
    bot.slack.click_button(KIM, CHANNEL, card.ts, "Retry")
    wait_for(lambda: bot.deps.store.get(incident.id).status == "contained",  # type: ignore[union-attr]
             timeout=60)
    assert aws_trace.count("CreateImage") == 1  # done steps are not run again
    assert aws_trace.count("CreateSnapshots") == 2
    wait_for(lambda: any(t.startswith("🔒 *Contained*") for t in thread(fake_slack, card)))
    assert any(t.startswith("🔁 <@U0KIM> asked to retry") for t in thread(fake_slack, card))


def test_snapshot_completion_is_reported_once(bot: RunningBot, world: sandbox_world.World,
                                              fake_slack: FakeSlack) -> None:
    card, _ = contain(bot, world)
    sweep(bot.deps)
    sweep(bot.deps)
    wait_for(lambda: not bot.deps.store.unsent())
    reports = [t for t in thread(fake_slack, card) if t.startswith("📦 Snapshots completed")]
    assert len(reports) == 1


def test_release_puts_everything_back(
        bot: RunningBot, world: sandbox_world.World, fleet: sandbox_world.Fleet,
        fake_slack: FakeSlack) -> None:
    before = instance_state(world, fleet)
    _, contained = contain(bot, world)
    assert instance_state(world, fleet) != before
    bot.slack.command(DANA, CHANNEL, f"release {world.instance_id} false positive")
    release_card = wait_for(lambda: fake_slack.channel_messages(CHANNEL)[1:])[0]
    text = json.dumps(release_card.blocks)
    assert "Release request" in text and contained.id in text and "web-prod-asg" in text
    # The same two-person rule: the requester may not approve the release.
    bot.slack.click_button(DANA, CHANNEL, release_card.ts, "Approve")
    assert "someone else" in wait_for(lambda: fake_slack.ephemerals_for(DANA))[-1]
    bot.slack.click_button(LEE, CHANNEL, release_card.ts, "Approve")
    release = settled(bot, release_card)
    assert release.status == "released", release.summary
    after = instance_state(world, fleet)
    # Everything is back but the revocation of the credentials the instance held before:
    # an attacker may have copied them. It stays until every one of them has expired.
    assert after["role_policies"] == ["cordon-revocations"]
    assert {**after, "role_policies": []} == before
    (kept,) = bot.deps.store.revocations(contained.id)
    assert kept.kind == "instance" and kept.removed_at is None
    undo = next(t for t in thread(fake_slack, release_card)
                if t.startswith("✅ *undo-remove-instance-profile*"))
    assert "stay revoked until" in undo
    # The sweep removes it only once the longest such credential has expired (12 h).
    cordon = bot.deps.cordon
    assert cordon.expire_revocations(kept.remove_after - timedelta(minutes=1)) == []
    (done,) = cordon.expire_revocations(kept.remove_after + timedelta(seconds=1))
    assert done[0].id == contained.id
    assert instance_state(world, fleet) == before
    assert cordon.expire_revocations(kept.remove_after + timedelta(hours=1)) == []  # once
    assert tags(world.instance_id)["cordon:status"] == "released"
    assert bot.deps.store.get(contained.id).status == "released"  # type: ignore[union-attr]
    # Evidence stays.
    assert client("ec2").describe_images(Owners=["self"], Filters=[
        {"Name": "tag:cordon:incident", "Values": [contained.id]}])["Images"]
    replies = thread(fake_slack, release_card)
    assert replies[-1].startswith("🔓 *Released*")
    # Releasing again gets a clear answer.
    bot.slack.command(DANA, CHANNEL, f"release {contained.id}")
    assert "already released" in wait_for(
        lambda: [e for e in fake_slack.ephemerals_for(DANA) if "already" in e])[0]


def test_release_of_what_was_never_contained_is_refused(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    bot.slack.command(DANA, CHANNEL, f"release {world.instance_id}")
    assert "nothing to release" in wait_for(lambda: fake_slack.ephemerals_for(DANA))[0]
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Deny")
    wait_for(lambda: bot.deps.store.recent()[0].status == "denied")
    bot.slack.command(DANA, CHANNEL, f"release {world.instance_id}")
    reply = wait_for(lambda: fake_slack.ephemerals_for(DANA)[1:])[0]
    assert "was denied: it changed nothing" in reply
    # The next request's card is the next message of the channel: no release card came.
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner again")
    cards = wait_for(lambda: (m := fake_slack.channel_messages(CHANNEL))[1:] and m)
    assert len(cards) == 2 and "Release request" not in json.dumps(cards[1].blocks)


def test_asg_decrement_is_a_setting(
        fake_slack: FakeSlack, world: sandbox_world.World, fleet: sandbox_world.Fleet,
        e2e_database_url: str, aws_trace: AwsTrace) -> None:
    from sandbox.harness import start_bot

    bot = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                    session_factory=aws_trace.session, CORDON_ASG_DECREMENT="true")
    try:
        _, incident = contain(bot, world)
        assert incident.status == "contained"
        (detach,) = [p for op, p in aws_trace.calls if op == "DetachInstances"]
        assert detach["ShouldDecrementDesiredCapacity"] is True
    finally:
        bot.stop()
