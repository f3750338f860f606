"""The open group is a transit, never a resting place. Faults are injected between the
bot and moto's server by an HTTP layer (throttling, 503, answers dropped after moto
applied the call, requests held while the bot is killed), the bot is driven through
its real HTTP endpoint with signed requests, and every test judges by moto's state:
the groups each ENI ends on.

moto tracks no connection: that the open → sealed move ends tracked flows is AWS's
documented behaviour, not something these tests can show."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bot.scheduler import take_over
from handlers.attribution import acting_as
from handlers.retry import Backoff
from playbooks.models import Incident, utcnow
from playbooks.service import ContainRequest
from playbooks.store import FAILED, RUNNING
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.faulty_aws import FaultyAws
from sandbox.harness import SECRET, RunningBot, stop_process, wait_for
from sandbox.signed import SignedSlack
from tests.conftest import AwsTrace, aws_client, settle, settle_card
from tests.test_cli import env_for, free_port, health

CHANNEL = "C0INCIDENT"
DANA, LEE, KIM = "U0DANA", "U0LEE", "U0KIM"
MODIFY = "ModifyNetworkInterfaceAttribute"


def ec2() -> Any:
    return aws_client("ec2")


def eni_groups(instance_id: str) -> dict[str, list[str]]:
    inst = ec2().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {e["NetworkInterfaceId"]: sorted(g["GroupId"] for g in e["Groups"])
            for e in inst["NetworkInterfaces"]}


def to(group_id: str) -> Any:
    """Matches a move of an ENI to exactly this group."""
    return lambda p: p.get("SecurityGroupId.1") == group_id and "SecurityGroupId.2" not in p


def contain(bot: RunningBot, target: str, playbook: str, approvers: tuple[str, ...] = (LEE,)
            ) -> Incident:
    assert bot.slack.command(DANA, CHANNEL, f"{target} {playbook} miner")[0] == 200
    card = wait_for(lambda: [m for m in bot.slack.fake.channel_messages(CHANNEL)
                             if "Approve" in str(m.blocks)])[-1]
    for who in approvers:
        bot.slack.click_button(who, CHANNEL, card.ts, "Approve")
    return settle_card(bot, card.ts)  # type: ignore[no-any-return]


def thread(bot: RunningBot, incident: Incident) -> list[str]:
    return [m.text for m in bot.slack.fake.thread(incident.channel_id, incident.card_ts or "")]


# the seal fails ------------------------------------------------------------------------


def test_a_seal_throttled_throughout_puts_every_eni_back_on_its_own_groups(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        groups: dict[str, str], fast_backoff: Backoff) -> None:
    before = eni_groups(world.instance_id)
    faulty.add(MODIFY, "throttle", times=-1, where=to(groups["sealed"]))
    done = contain(faulty_bot, world.instance_id, "isolate")
    assert done.status == FAILED
    # Not one ENI rests on the allow-all group: each is back on its own groups.
    assert eni_groups(world.instance_id) == before
    # The seal was retried with backoff, for each ENI.
    assert len(faulty.calls(MODIFY, to(groups["sealed"]))) == fast_backoff.attempts * 2
    (step,) = [s for s in faulty_bot.deps.store.steps(done.id)
               if s.name == "isolate-security-groups"]
    assert step.status == "failed" and step.error_code == "RequestLimitExceeded"
    # The thread says where each ENI is, from a describe made after the fact.
    message = next(t for t in thread(faulty_bot, done)
                   if t.startswith("❌ *isolate-security-groups* failed"))
    assert message.count("(its own groups, as before)") == len(before)
    assert "cordon-open" not in message.split("Done before the failure")[1]


def test_a_full_run_whose_seal_fails_still_strips_the_role_and_snapshots(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        groups: dict[str, str], fast_backoff: Backoff) -> None:
    before = eni_groups(world.instance_id)
    faulty.add(MODIFY, "throttle", times=-1, where=to(groups["sealed"]))
    done = contain(faulty_bot, world.instance_id, "full")
    assert done.status == FAILED
    assert eni_groups(world.instance_id) == before
    status = {s.name: s.status for s in faulty_bot.deps.store.steps(done.id)}
    assert status["isolate-security-groups"] == "failed"
    # What does not need the cut still ran: the stolen role is gone, the disks are kept.
    assert status["remove-instance-profile"] == "succeeded"
    assert status["snapshot-volumes"] == "succeeded"
    assoc = ec2().describe_iam_instance_profile_associations(Filters=[
        {"Name": "instance-id", "Values": [world.instance_id]},
        {"Name": "state", "Values": ["associated"]}])["IamInstanceProfileAssociations"]
    assert assoc == []


@pytest.mark.parametrize("effect", ["throttle", "unavailable", "drop"])
def test_a_seal_that_fails_once_is_retried_and_the_instance_is_contained(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        groups: dict[str, str], fast_backoff: Backoff, effect: str) -> None:
    before = eni_groups(world.instance_id)
    faulty.add(MODIFY, effect, times=1, where=to(groups["sealed"]))
    done = contain(faulty_bot, world.instance_id, "isolate")
    assert done.status == "contained"
    assert eni_groups(world.instance_id) == {eni: [groups["sealed"]] for eni in before}
    # Two ENIs, one of them sealed at the second attempt.
    assert len(faulty.calls(MODIFY, to(groups["sealed"]))) == 3
    # Each ENI spent one round trip (plus the retry) on the open group, never waiting
    # for the other ENIs.
    (step,) = [s for s in faulty_bot.deps.store.steps(done.id)
               if s.name == "isolate-security-groups"]
    assert set((step.details or {})["open_seconds"]) == set(before)


def test_an_open_move_that_fails_still_seals_the_eni_and_says_it_is_not_severed(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        groups: dict[str, str], fast_backoff: Backoff) -> None:
    before = eni_groups(world.instance_id)
    faulty.add(MODIFY, "throttle", times=-1, where=to(groups["open"]))
    done = contain(faulty_bot, world.instance_id, "isolate")
    assert eni_groups(world.instance_id) == {eni: [groups["sealed"]] for eni in before}
    # Sealed, but the crossing that ends tracked flows never happened (it was tried once
    # more): never reported as contained.
    assert done.status == "partially contained", done.summary
    assert len(faulty.calls(MODIFY, to(groups["open"]))) >= 2 * len(before)
    (step,) = [s for s in faulty_bot.deps.store.steps(done.id)
               if s.name == "isolate-security-groups"]
    assert step.status == "failed" and step.error_code == "NotConverted"
    assert "tracked connections may survive" in (step.error_message or "")


# crashes and leases ----------------------------------------------------------------------


def _serve(tmp_path: Path, local_aws: sandbox_world.LocalAws, faulty: FaultyAws,
           fake_slack: FakeSlack, port: int, db: str, name: str, **extra: str
           ) -> subprocess.Popen[bytes]:
    env = env_for(local_aws, SLACK_BOT_TOKEN="xoxb-test", SLACK_SIGNING_SECRET=SECRET,
                  SLACK_API_URL=fake_slack.api_url, CORDON_APPROVERS="S0ONCALL",
                  CORDON_DATABASE_URL=db, PORT=str(port), **extra)
    env["AWS_ENDPOINT_URL"] = faulty.url
    log = (tmp_path / f"{name}.log").open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    wait_for(lambda: health(port) == 200, timeout=30)
    return proc


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        stop_process(proc)


def _approve_and_hold_the_seal(slack: SignedSlack, fake_slack: FakeSlack, faulty: FaultyAws,
                               world: sandbox_world.World, sealed: str) -> str:
    faulty.add(MODIFY, "hold", times=-1, where=to(sealed))
    assert slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")[0] == 200
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)[0]
    slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    assert faulty.wait_held(2)
    return str(card.ts)


def test_kill_9_while_enis_are_on_the_open_group_and_restart_seals_them_first(
        tmp_path: Path, local_aws: sandbox_world.LocalAws, world: sandbox_world.World,
        fake_slack: FakeSlack, faulty: FaultyAws, groups: dict[str, str]) -> None:
    before = eni_groups(world.instance_id)
    port = free_port()
    db = f"sqlite:///{tmp_path}/cordon.db"
    # A lease far longer than the test: only recognising its own dead run lets the
    # restarted process take it over.
    first = _serve(tmp_path, local_aws, faulty, fake_slack, port, db, "first",
                   CORDON_LEASE_SECONDS="300")
    try:
        slack = SignedSlack(f"http://127.0.0.1:{port}/slack/events", SECRET, fake_slack)
        card_ts = _approve_and_hold_the_seal(slack, fake_slack, faulty, world,
                                             groups["sealed"])
        assert eni_groups(world.instance_id) == {eni: [groups["open"]] for eni in before}
        first.kill()
        first.wait(timeout=10)
    finally:
        _stop(first)
    faulty.release()  # what the dead process sent never reaches AWS
    second = _serve(tmp_path, local_aws, faulty, fake_slack, port, db, "second",
                    CORDON_LEASE_SECONDS="300")
    try:
        wait_for(lambda: eni_groups(world.instance_id)
                 == {eni: [groups["sealed"]] for eni in before}, timeout=30)
        wait_for(lambda: any(t.text.startswith("🔒 *Contained*")
                             for t in fake_slack.thread(CHANNEL, card_ts)), timeout=30)
    finally:
        _stop(second)
    texts = [m.text for m in fake_slack.thread(CHANNEL, card_ts)]
    # Killed after the first reply, mid-cut: every message of the thread exactly once.
    assert texts[0].startswith("▶️ Approved by")
    assert [t for t, n in Counter(texts).items() if n > 1] == []
    final = fake_slack.message(CHANNEL, card_ts)
    assert final is not None and final.text.endswith("contained")  # the card ends final
    safe = [t for t in texts if t.startswith("🛟")]
    assert len(safe) == 1 and all(f"{eni} was on cordon-open: sealed" in safe[0]
                                  for eni in before)
    # Sealed before anything else of the resumed run.
    assert texts.index(safe[0]) < next(i for i, t in enumerate(texts)
                                       if t.startswith("▶️ Resuming"))


def test_another_replica_takes_over_a_dead_replicas_run_after_its_lease(
        bot: RunningBot, world: sandbox_world.World, groups: dict[str, str]) -> None:
    """A worker on another host died between the two moves; this replica takes the run
    over when the lease lapses (by the database's clock) and seals first."""
    before = eni_groups(world.instance_id)
    cordon, store = bot.deps.cordon, bot.deps.store
    facts = cordon.lookup_instance(world.instance_id)
    incident = cordon.open_request(ContainRequest(world.instance_id, "isolate", "t", DANA,
                                                  CHANNEL), facts)
    resp = bot.deps.client.chat_postMessage(channel=CHANNEL, text="card")
    cordon.card_posted(incident.id, CHANNEL, resp["ts"])
    assert store.decide(incident.id, LEE, approve=True)
    assert store.claim_run(incident.id, "elsewhere:1:deadbeef:1", 2)
    captured = {"vpc_id": world.vpc_id, "enis": [
        {"id": eni, "groups": [{"id": g, "name": ""} for g in gs], "conntrack": {}}
        for eni, gs in before.items()]}
    (step, _) = store.ensure_steps(incident.id, ["isolate-security-groups", "tag-instance"])
    store.update_step(step.id, status="running", captured=captured, attempts=1)
    for eni in before:
        ec2().modify_network_interface_attribute(NetworkInterfaceId=eni,
                                                 Groups=[groups["open"]])
    assert take_over(bot.deps) == []  # its lease still holds
    wait_for(lambda: take_over(bot.deps), timeout=10)
    assert settle(bot, incident.id).status == "contained"
    assert eni_groups(world.instance_id) == {eni: [groups["sealed"]] for eni in before}


def test_a_worker_that_loses_its_lease_stops_before_its_next_aws_call(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        groups: dict[str, str], fast_backoff: Backoff) -> None:
    before = eni_groups(world.instance_id)
    store = faulty_bot.deps.store
    faulty.add(MODIFY, "hold", times=-1, where=to(groups["open"]))
    assert faulty_bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate m")[0] == 200
    card = wait_for(lambda: faulty_bot.slack.fake.channel_messages(CHANNEL))[0]
    faulty_bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    assert faulty.wait_held(2)
    incident = wait_for(lambda: next((i for i in store.recent() if i.card_ts == card.ts), None))
    # Another worker takes the run (its lease was thought lapsed).
    with store.session() as s:
        s.execute(update(Incident).where(Incident.id == incident.id)
                  .values(lease_owner="thief:1:cafe:1", lease_until=utcnow()))
    wait_for(lambda: any(t.startswith("⚠️ A worker lost this run's lease")
                         for t in thread(faulty_bot, incident)), timeout=20)
    calls = len(faulty.seen)
    faulty.release()  # the held moves are lost; the worker would now retry them
    # Its run has returned: whatever it was going to send, it has sent.
    wait_for(lambda: incident.id not in faulty_bot.deps.worker.running(), timeout=30)
    assert len(faulty.seen) == calls  # it retried nothing
    # Its open moves went out and their answers never came: they may have landed. The
    # one thing a worker without a lease still does is take such an ENI off the open
    # group — it sealed them; it never tried the open move again.
    assert len(faulty.calls(MODIFY, to(groups["open"]))) == len(before)
    assert eni_groups(world.instance_id) == {eni: [groups["sealed"]] for eni in before}
    after = store.get(incident.id)
    assert after is not None and after.status == RUNNING
    assert after.lease_owner == "thief:1:cafe:1"
    (step,) = [s for s in store.steps(incident.id) if s.name == "isolate-security-groups"]
    assert step.status == "running"  # the record belongs to the new owner now


# Auto Scaling -------------------------------------------------------------------------------


@pytest.mark.parametrize("playbook", ["isolate", "nacl", "route", "igw"])
def test_a_network_only_playbook_never_hands_the_instance_to_its_group(
        bot: RunningBot, world: sandbox_world.World, playbook: str) -> None:
    fleet = sandbox_world.join_fleet(world)
    approvers = (LEE,) if playbook == "isolate" else (LEE, KIM)
    done = contain(bot, world.instance_id, playbook, approvers)
    assert done.status == "contained", done.summary
    status = {s.name: s.status for s in bot.deps.store.steps(done.id)}
    assert status["protect-evidence"] == "succeeded"
    assert status["detach-from-auto-scaling"] == "succeeded"
    client = aws_client
    assert client("autoscaling").describe_auto_scaling_instances(
        InstanceIds=[world.instance_id])["AutoScalingInstances"] == []
    health = client("elbv2").describe_target_health(
        TargetGroupArn=fleet.target_group)["TargetHealthDescriptions"]
    assert all(d["TargetHealth"]["State"] in ("draining", "unused") for d in health)
    protected = ec2().describe_instance_attribute(InstanceId=world.instance_id,
                                                  Attribute="disableApiTermination")
    assert protected["DisableApiTermination"]["Value"] is True
    card = bot.slack.fake.message(CHANNEL, done.card_ts or "")
    assert card is not None and "detached first" in str(card.blocks)


def test_isolate_on_an_instance_in_no_group_adds_nothing(
        bot: RunningBot, world: sandbox_world.World) -> None:
    done = contain(bot, world.instance_id, "isolate")
    assert [s.name for s in bot.deps.store.steps(done.id)] == ["isolate-security-groups",
                                                               "tag-instance"]


def test_a_throttled_membership_read_does_not_stop_the_cut_of_an_instance_in_no_group(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        groups: dict[str, str], fast_backoff: Backoff) -> None:
    faulty.add("DescribeAutoScalingInstances", "throttle", times=-1)
    done = contain(faulty_bot, world.instance_id, "full")
    assert done.status == "contained", done.summary
    assert all(g == [groups["sealed"]] for g in eni_groups(world.instance_id).values())


# runs never loop silently ---------------------------------------------------------------------


def test_an_error_outside_a_step_ends_the_run_failed_and_says_why(
        bot: RunningBot, world: sandbox_world.World) -> None:
    cordon, store = bot.deps.cordon, bot.deps.store
    facts = cordon.lookup_instance(world.instance_id)
    incident = cordon.open_request(ContainRequest(world.instance_id, "isolate", "t", DANA,
                                                  CHANNEL), facts)
    resp = bot.deps.client.chat_postMessage(channel=CHANNEL, text="card")
    cordon.card_posted(incident.id, CHANNEL, resp["ts"])
    with store.session() as s:  # a playbook this version does not know
        s.execute(update(Incident).where(Incident.id == incident.id).values(playbook="gone"))
    cordon.decide(incident.id, LEE, approve=True)
    done = settle(bot, incident.id)
    assert done.status == FAILED
    assert "unknown playbook 'gone'" in done.summary
    assert any("unknown playbook" in t for t in thread(bot, done))
    assert take_over(bot.deps) == []  # not resumed again


def test_retry_is_refused_while_a_release_is_open_and_release_while_a_run_is(
        bot: RunningBot, world: sandbox_world.World, aws_trace: AwsTrace) -> None:
    aws_trace.fail("CreateTags", "UnauthorizedOperation", times=10)
    done = contain(bot, world.instance_id, "isolate")
    assert done.status == "partially contained"
    cordon = bot.deps.cordon
    release = cordon.open_release(done.id, "undo", DANA, CHANNEL)
    with pytest.raises(Exception, match="release in progress"):
        cordon.retry(done.id, LEE)
    assert bot.deps.store.get(done.id).status == "partially contained"  # type: ignore[union-attr]
    # Release denied: now it may be retried, and while it runs no release is accepted.
    assert bot.deps.store.decide(release.id, LEE, approve=False)
    with bot.deps.store.session() as s:
        s.execute(update(Incident).where(Incident.id == done.id).values(status=RUNNING))
    with pytest.raises(Exception, match="still running"):
        cordon.open_release(done.id, "undo", DANA, CHANNEL)


def test_the_lease_is_renewed_by_the_database_clock(bot: RunningBot,
                                                    world: sandbox_world.World) -> None:
    store = bot.deps.store
    facts = bot.deps.cordon.lookup_instance(world.instance_id)
    incident = bot.deps.cordon.open_request(ContainRequest(world.instance_id, "isolate", "t",
                                                           DANA, CHANNEL), facts)
    store.decide(incident.id, LEE, approve=True)
    assert store.claim_run(incident.id, "w:1:a:1", 30)
    got = store.get(incident.id)
    assert got is not None and got.lease_until is not None
    ahead = (got.lease_until - utcnow()).total_seconds()
    assert 25 < ahead <= 31


def test_kill_9_after_the_snapshots_resumes_with_every_message_once_and_one_image(
        tmp_path: Path, local_aws: sandbox_world.LocalAws, world: sandbox_world.World,
        fake_slack: FakeSlack, faulty: FaultyAws) -> None:
    """A `full` run killed after its snapshots, its image being made: the restarted
    process finishes it; the thread holds each message once, one image exists."""
    port = free_port()
    db = f"sqlite:///{tmp_path}/cordon.db"
    first = _serve(tmp_path, local_aws, faulty, fake_slack, port, db, "first",
                   CORDON_LEASE_SECONDS="300")
    try:
        slack = SignedSlack(f"http://127.0.0.1:{port}/slack/events", SECRET, fake_slack)
        faulty.add("CreateImage", "hold", times=-1)
        assert slack.command(DANA, CHANNEL, f"{world.instance_id} full miner")[0] == 200
        card = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)[0]
        slack.click_button(LEE, CHANNEL, card.ts, "Approve")
        assert faulty.wait_held(1)
        wait_for(lambda: any(m.text.startswith("✅ *snapshot-volumes*")
                             for m in fake_slack.thread(CHANNEL, card.ts)), timeout=30)
        first.kill()
        first.wait(timeout=10)
    finally:
        _stop(first)
    faulty.release()
    second = _serve(tmp_path, local_aws, faulty, fake_slack, port, db, "second",
                    CORDON_LEASE_SECONDS="300")
    try:
        wait_for(lambda: any(m.text.startswith("🔒 *Contained*")
                             for m in fake_slack.thread(CHANNEL, card.ts)), timeout=60)
    finally:
        _stop(second)
    texts = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    assert [t for t, n in Counter(texts).items() if n > 1] == []
    assert sum(t.startswith("✅ *snapshot-volumes*") for t in texts) == 1
    assert sum(t.startswith("✅ *create-image*") for t in texts) == 1
    images = ec2().describe_images(Owners=["self"], Filters=[
        {"Name": "tag:cordon:instance", "Values": [world.instance_id]}])["Images"]
    assert len(images) == 1


def test_a_detach_whose_answer_was_lost_does_not_stop_the_cut(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        groups: dict[str, str], fast_backoff: Backoff) -> None:
    """moto detaches, the answer is lost; the retry is refused (not in the group any
    more). The group is asked before the step is called failed: it landed."""
    sandbox_world.join_fleet(world)
    faulty.add("DetachInstances", "drop")  # applied by moto, answer lost
    # AWS refuses a detach of an instance no longer in the group (moto does not).
    faulty.add("DetachInstances", "refuse:ValidationError")
    done = contain(faulty_bot, world.instance_id, "full")
    assert done.status == "contained", done.summary
    assert len(faulty.calls("DetachInstances")) == 2
    assert all(g == [groups["sealed"]] for g in eni_groups(world.instance_id).values())


def test_a_disassociation_whose_answer_was_lost_still_gets_its_revocation(
        faulty_bot: RunningBot, world: sandbox_world.World, faulty: FaultyAws,
        fast_backoff: Backoff) -> None:
    faulty.add("DisassociateIamInstanceProfile", "drop")  # applied, answer lost
    done = contain(faulty_bot, world.instance_id, "full")
    assert done.status == "contained", done.summary
    policy = aws_client("iam").get_role_policy(RoleName="web-prod",
                                               PolicyName="cordon-revocations")
    (statement,) = policy["PolicyDocument"]["Statement"]
    assert statement["Sid"].startswith("CordonRevoke" + world.instance_id.replace("-", ""))


def test_kill_9_before_the_detach_answered_puts_the_enis_back_and_seals_only_after_it(
        tmp_path: Path, local_aws: sandbox_world.LocalAws, world: sandbox_world.World,
        fake_slack: FakeSlack, faulty: FaultyAws, groups: dict[str, str]) -> None:
    """`full` on an Auto Scaling member: the move to cordon-open goes out with the detach,
    which does not answer. After SEAL_WAIT the ENIs head back to their own groups (those
    moves held too), and the process is killed with both ENIs on cordon-open. The
    restarted process must not seal them before the detach has answered — the group
    would replace the instance: it puts them back, detaches, then cuts."""
    sandbox_world.join_fleet(world)
    before = eni_groups(world.instance_id)
    own = lambda p: "SecurityGroupId.1" in p and p["SecurityGroupId.1"] not in (  # noqa: E731
        groups["open"], groups["sealed"])
    port = free_port()
    db = f"sqlite:///{tmp_path}/cordon.db"
    first = _serve(tmp_path, local_aws, faulty, fake_slack, port, db, "first",
                   CORDON_LEASE_SECONDS="300")
    try:
        faulty.add("DetachInstances", "hold", times=-1)
        faulty.add(MODIFY, "hold", times=-1, where=own)
        slack = SignedSlack(f"http://127.0.0.1:{port}/slack/events", SECRET, fake_slack)
        assert slack.command(DANA, CHANNEL, f"{world.instance_id} full miner")[0] == 200
        card = wait_for(lambda: fake_slack.channel_messages(CHANNEL), timeout=30)[0]
        slack.click_button(LEE, CHANNEL, card.ts, "Approve")
        assert faulty.wait_held(1 + len(before))  # the detach, and every way back
        assert eni_groups(world.instance_id) == {eni: [groups["open"]] for eni in before}
        first.kill()
        first.wait(timeout=10)
    finally:
        _stop(first)
    faulty.release()  # what the dead process sent never reaches AWS
    second = _serve(tmp_path, local_aws, faulty, fake_slack, port, db, "second",
                    CORDON_LEASE_SECONDS="300")
    try:
        wait_for(lambda: any(t.text.startswith("🔒 *Contained*")
                             for t in fake_slack.thread(CHANNEL, card.ts)), timeout=60)
    finally:
        _stop(second)
    assert eni_groups(world.instance_id) == {eni: [groups["sealed"]] for eni in before}
    assert aws_client("autoscaling").describe_auto_scaling_instances(
        InstanceIds=[world.instance_id])["AutoScalingInstances"] == []
    texts = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    (safe,) = [t for t in texts if t.startswith("🛟")]
    assert all(f"{eni} was on cordon-open: back on its own groups "
               "(detach-from-auto-scaling had not answered)" in safe for eni in before)
    # No seal before a detach that reached AWS.
    order = [(s.action, s.answered, s.params) for s in faulty.seen]
    detached = next(i for i, (a, e, _) in enumerate(order)
                    if a == "DetachInstances" and e == "forwarded")
    first_seal = next(i for i, (a, _, p) in enumerate(order)
                      if a == MODIFY and to(groups["sealed"])(p))
    assert detached < first_seal


def test_a_second_crossing_whose_seal_stays_throttled_ends_sealed_not_on_its_own_groups(
        world: sandbox_world.World, faulty: FaultyAws, groups: dict[str, str],
        fast_backoff: Backoff) -> None:
    """An ENI already sealed crosses again (cordon-open had drifted): its seal stays
    throttled, so it goes back — to cordon-sealed, where it rested, never to its own
    groups. Judged by moto's state."""
    from handlers.aws import ClientPool
    from handlers.eni_cut import EniCutMachine, Event, State
    from handlers.isolation import cut_eni

    eni = next(iter(eni_groups(world.instance_id)))
    ec2().modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=[groups["sealed"]])
    machine = EniCutMachine()
    machine.start()
    for event in (Event.OPENED, Event.GO, Event.SEALED, Event.DRIFTED):
        machine.fire(event)
    # Every attempt of the crossing's seal (fast_backoff: 4) is throttled; the way back
    # to the sealed group then gets through.
    faulty.add(MODIFY, "throttle", times=fast_backoff.attempts, where=to(groups["sealed"]))
    clients = ClientPool(lambda: sandbox_world.proxied_session(faulty.url)).for_region(
        "us-east-1")
    with acting_as("isolate-security-groups"):
        cut = cut_eni(clients, {"id": eni, "groups": [{"id": world.web_group}]},
                      groups["open"], groups["sealed"], machine=machine)
    assert machine.state is State.SEALED and cut.sealed and not cut.converted
    assert eni_groups(world.instance_id)[eni] == [groups["sealed"]]
    assert not faulty.calls(MODIFY, to(world.web_group))  # never sent to its own groups
