"""Evidence is made once and its ids always recorded: under an answer lost after moto
applied the call (botocore would retry and make it twice), and after a resume that
finds what an earlier attempt made. Faults go through the HTTP layer in front of moto."""

from __future__ import annotations

from typing import Any

from bot.scheduler import sweep
from handlers.retry import Backoff
from playbooks.models import Incident
from sandbox import world as sandbox_world
from sandbox.faulty_aws import FaultyAws
from sandbox.harness import RunningBot, wait_for
from tests.conftest import aws_client, settle_card

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"


def ec2() -> Any:
    return aws_client("ec2")


def volumes(instance_id: str) -> set[str]:
    inst = ec2().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {m["Ebs"]["VolumeId"] for m in inst["BlockDeviceMappings"]}


def evidence_of(incident_id: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    tagged = [{"Name": "tag:cordon:incident", "Values": [incident_id]}]
    snaps = ec2().describe_snapshots(OwnerIds=["self"], Filters=[
        *tagged, {"Name": "tag:cordon:evidence", "Values": ["snapshot"]}])["Snapshots"]
    images = ec2().describe_images(Owners=["self"], Filters=tagged)["Images"]
    return snaps, images


def request(bot: RunningBot, instance_id: str) -> Any:
    assert bot.slack.command(DANA, CHANNEL, f"{instance_id} full miner")[0] == 200
    return wait_for(lambda: bot.slack.fake.channel_messages(CHANNEL))[0]


def approve(bot: RunningBot, card: Any) -> Incident:
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    return settle_card(bot, card.ts)  # type: ignore[no-any-return]


def test_a_lost_answer_does_not_make_evidence_twice(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        fast_backoff: Backoff) -> None:
    faulty.add("CreateSnapshots", "drop")
    faulty.add("CreateImage", "drop")
    done = approve(faulty_bot, request(faulty_bot, world.instance_id))
    assert done.status == "contained", done.summary
    # moto applied each first call; its answer was lost; nothing was made twice.
    assert len(faulty.calls("CreateSnapshots")) == 1
    assert len(faulty.calls("CreateImage")) == 1
    snaps, images = evidence_of(done.id)
    assert sorted(s["VolumeId"] for s in snaps) == sorted(volumes(world.instance_id))
    assert len(images) == 1
    steps = {s.name: s for s in faulty_bot.deps.store.steps(done.id)}
    recorded = {s["id"] for s in (steps["snapshot-volumes"].details or {})["snapshots"]}
    assert recorded == {s["SnapshotId"] for s in snaps}
    assert (steps["create-image"].details or {})["image"] == images[0]["ImageId"]


def test_a_garbled_answer_to_the_evidence_look_up_is_asked_again(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        fast_backoff: Backoff) -> None:
    """The look-up before a create gets an answer it cannot read (botocore: "further
    retries may succeed"): it is asked again, and the snapshots are made once."""
    faulty.add("DescribeSnapshots", "rewrite:<?xml=<<garbled", times=1)
    done = approve(faulty_bot, request(faulty_bot, world.instance_id))
    assert done.status == "contained", done.summary
    assert len(faulty.calls("CreateSnapshots")) == 1
    snaps, _ = evidence_of(done.id)
    assert sorted(s["VolumeId"] for s in snaps) == sorted(volumes(world.instance_id))


def test_a_resumed_run_records_the_evidence_an_earlier_attempt_made(
        faulty_bot: RunningBot, world: sandbox_world.World) -> None:
    card = request(faulty_bot, world.instance_id)
    incident = wait_for(lambda: next((i for i in faulty_bot.deps.store.recent()
                                      if i.card_ts == card.ts), None))
    # An earlier attempt made the snapshots and died before recording them.
    tags = [{"Key": "cordon:incident", "Value": incident.id},
            {"Key": "cordon:instance", "Value": world.instance_id},
            {"Key": "cordon:evidence", "Value": "snapshot"}]
    earlier = ec2().create_snapshots(
        InstanceSpecification={"InstanceId": world.instance_id},
        TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}])["Snapshots"]
    done = approve(faulty_bot, card)
    assert done.status == "contained", done.summary
    snaps, _ = evidence_of(done.id)
    assert {s["SnapshotId"] for s in snaps} == {s["SnapshotId"] for s in earlier}  # no more
    replies = [m.text for m in faulty_bot.slack.fake.thread(CHANNEL, card.ts)]
    step = next(r for r in replies if r.startswith("✅ *snapshot-volumes*"))
    assert all(s["SnapshotId"] in step for s in earlier) and "earlier attempt" in step
    summary = next(r for r in replies if r.startswith("✅ *verify-containment*"))
    assert all(s["SnapshotId"] in summary for s in earlier)
    # The follow-up knows them, and says so once.
    sweep(faulty_bot.deps)
    wait_for(lambda: any(m.text.startswith("📦 Snapshots completed")
                         for m in faulty_bot.slack.fake.thread(CHANNEL, card.ts)))


def test_a_protection_the_instance_does_not_support_is_skipped_and_said(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws) -> None:
    faulty.add("ModifyInstanceAttribute", "refuse:UnsupportedOperation", times=-1,
               where=lambda p: "DisableApiStop.Value" in p)
    done = approve(faulty_bot, request(faulty_bot, world.instance_id))
    assert done.status == "contained", done.summary
    protect = next(m.text for m in faulty_bot.slack.fake.thread(CHANNEL, done.card_ts or "")
                   if m.text.startswith("✅ *protect-evidence*"))
    assert "termination protection on" in protect
    assert "skipped: disableApiStop (UnsupportedOperation" in protect
    attr = ec2().describe_instance_attribute(InstanceId=world.instance_id,
                                             Attribute="disableApiTermination")
    assert attr["DisableApiTermination"]["Value"] is True


def test_a_spot_instance_gets_no_termination_protection_and_the_thread_says_why(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws) -> None:
    spot = ec2().run_instances(
        ImageId=sandbox_world.SANDBOX_IMAGE, MinCount=1, MaxCount=1, InstanceType="t3.micro",
        SubnetId=world.subnet_id, InstanceMarketOptions={"MarketType": "spot"},
    )["Instances"][0]["InstanceId"]
    done = approve(faulty_bot, request(faulty_bot, spot))
    assert done.status == "contained", done.summary
    assert faulty.calls("ModifyInstanceAttribute",
                        lambda p: "DisableApiTermination.Value" in p) == []
    protect = next(m.text for m in faulty_bot.slack.fake.thread(CHANNEL, done.card_ts or "")
                   if m.text.startswith("✅ *protect-evidence*"))
    assert "a Spot Instance cannot take termination protection" in protect
    assert "stop protection on" in protect


def test_the_snapshot_follow_up_waits_while_a_snapshot_is_pending_then_says_so_once(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws) -> None:
    """moto completes snapshots at once; the fault layer shows them `pending`, as AWS
    does for minutes to hours."""
    pending = faulty.add("DescribeSnapshots", "rewrite:<status>completed</status>="
                         "<status>pending</status>", times=-1)
    done = approve(faulty_bot, request(faulty_bot, world.instance_id))
    assert done.status == "contained", done.summary

    def reports() -> list[str]:
        return [m.text for m in faulty_bot.slack.fake.thread(CHANNEL, done.card_ts or "")
                if m.text.startswith("📦 Snapshots")]

    sweep(faulty_bot.deps)
    sweep(faulty_bot.deps)
    assert reports() == []  # still pending: nothing said yet
    assert pending.hits >= 2
    pending.times = 0  # they complete
    sweep(faulty_bot.deps)
    wait_for(lambda: len(reports()) == 1)
    sweep(faulty_bot.deps)
    assert len(reports()) == 1  # said once
