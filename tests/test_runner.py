"""The runner: order, resume after a crash, partial failure. Through the real bot
wiring, against moto's server and both databases."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from bot.scheduler import sweep
from handlers.aws import ClientPool
from handlers.isolation import prepare_vpcs
from playbooks.models import Incident, utcnow
from playbooks.service import ContainRequest
from playbooks.store import RUNNING
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, wait_for
from tests.conftest import AwsTrace, aws_client, settle

CHANNEL = "C0INCIDENT"


def eni_groups(instance_id: str) -> dict[str, list[str]]:
    ec2 = aws_client("ec2")
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {e["NetworkInterfaceId"]: [g["GroupId"] for g in e["Groups"]]
            for e in inst["NetworkInterfaces"]}


def open_incident(bot: RunningBot, world: sandbox_world.World) -> Incident:
    cordon = bot.deps.cordon
    facts = cordon.lookup_instance(world.instance_id)
    incident = cordon.open_request(ContainRequest(world.instance_id, "isolate", "test",
                                                  "U0DANA", CHANNEL), facts)
    resp = bot.deps.client.chat_postMessage(channel=CHANNEL, text="card")
    cordon.card_posted(incident.id, CHANNEL, resp["ts"])
    return incident


def final(bot: RunningBot, incident_id: str) -> Incident:
    return settle(bot, incident_id)  # type: ignore[no-any-return]


def test_an_interrupted_run_resumes_and_keeps_the_true_prior_state(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    original = eni_groups(world.instance_id)
    incident = open_incident(bot, world)
    store = bot.deps.store
    assert store.decide(incident.id, "U0LEE", approve=True)
    # A worker claimed the run, saved the prior state, moved the ENIs to the open group
    # and died before the sealed one.
    assert store.claim_run(incident.id, "dead-worker", 60)
    rows = prepare_vpcs(ClientPool().for_region("us-east-1"), [world.vpc_id])
    open_group = rows[0]["open"]
    captured = {"vpc_id": world.vpc_id, "enis": [
        {"id": eni, "groups": [{"id": g, "name": ""} for g in groups], "conntrack": {}}
        for eni, groups in original.items()]}
    steps = store.ensure_steps(incident.id, ["isolate-security-groups", "tag-instance"])
    store.update_step(steps[0].id, status="running", captured=captured, attempts=1)
    ec2 = aws_client("ec2")
    for eni in original:
        ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=[open_group])
    # Nothing is resumed while the dead worker's lease still holds.
    assert sweep(bot.deps)["resumed"] == 0
    with store.session() as s:
        s.execute(update(Incident).where(Incident.id == incident.id)
                  .values(lease_until=utcnow() - timedelta(seconds=1)))
    assert store.get(incident.id).status == RUNNING  # type: ignore[union-attr]
    assert sweep(bot.deps)["resumed"] == 1
    done = final(bot, incident.id)
    assert done.status == "contained"
    steps = store.steps(incident.id)
    assert eni_groups(world.instance_id) == {eni: [rows[0]["sealed"]] for eni in original}
    assert steps[0].captured == captured  # not the open group it found on resume
    assert steps[0].attempts == 2
    wait_for(lambda: not store.unsent())
    texts = [m.text for m in fake_slack.thread(CHANNEL, done.card_ts or "")]
    # The ENIs left on the open group were sealed before anything else, and it says so.
    assert texts[0].startswith("🛟 *isolate-security-groups*: found half done")
    assert all(f"{eni} was on cordon-open: sealed" in texts[0] for eni in original)
    assert texts[1].startswith("▶️ Resuming `isolate`")


def test_a_failed_non_critical_step_leaves_the_run_partially_contained(
        bot: RunningBot, world: sandbox_world.World, aws_trace: AwsTrace) -> None:
    incident = open_incident(bot, world)
    aws_trace.fail("CreateTags", "UnauthorizedOperation", "not authorized to CreateTags",
                   times=10)
    bot.deps.cordon.decide(incident.id, "U0LEE", approve=True)
    done = final(bot, incident.id)
    assert done.status == "partially contained"
    steps = bot.deps.store.steps(incident.id)
    assert [s.status for s in steps] == ["succeeded", "failed"]
    assert steps[1].error_code == "UnauthorizedOperation"
    assert "tag-instance (UnauthorizedOperation)" in done.summary


def test_throttling_is_retried_and_does_not_fail_the_run(
        bot: RunningBot, world: sandbox_world.World, aws_trace: AwsTrace) -> None:
    incident = open_incident(bot, world)
    aws_trace.fail("ModifyNetworkInterfaceAttribute", "Throttling", "Rate exceeded", times=2,
                   status=400)
    bot.deps.cordon.decide(incident.id, "U0LEE", approve=True)
    assert final(bot, incident.id).status == "contained"


def test_an_instance_already_isolated_is_not_touched_again(
        bot: RunningBot, world: sandbox_world.World, aws_trace: AwsTrace) -> None:
    first = open_incident(bot, world)
    bot.deps.cordon.decide(first.id, "U0LEE", approve=True)
    assert final(bot, first.id).status == "contained"
    moves = aws_trace.count("ModifyNetworkInterfaceAttribute")
    second = open_incident(bot, world)
    bot.deps.cordon.decide(second.id, "U0LEE", approve=True)
    assert final(bot, second.id).status == "contained"
    assert aws_trace.count("ModifyNetworkInterfaceAttribute") == moves
    assert bot.deps.store.steps(second.id)[0].status == "skipped"


def test_a_worker_that_lost_its_run_stops_moving_enis_once_another_owner_holds_it(
        bot: RunningBot, world: sandbox_world.World, aws_trace: AwsTrace) -> None:
    """The lease is lost while a move back is being retried (throttled): as soon as the
    store shows another owner, the retries stop — a move back landing after the new
    owner sealed the ENI would undo its cut."""
    import threading

    from handlers.attribution import acting_as
    from handlers.isolation import RESTORE_RETRY, put_back
    from handlers.lease import RunGuard, fail_safe, run_guard

    incident = open_incident(bot, world)
    store = bot.deps.store
    assert store.decide(incident.id, "U0LEE", approve=True)
    runner = bot.deps.worker.runner
    assert store.claim_run(incident.id, runner.owner, 0.2)
    guard, stop = RunGuard(incident.id), threading.Event()
    guard.lose("the database did not answer (OperationalError)")
    watcher = threading.Thread(target=runner._watch_takeover, args=(incident.id, guard, stop))
    watcher.start()
    eni = next(iter(eni_groups(world.instance_id)))
    # Every move is throttled: without the takeover, the retries go on for RESTORE_RETRY.
    aws_trace.fail("ModifyNetworkInterfaceAttribute", "RequestLimitExceeded", times=100)
    wait_for(lambda: store.claim_run(incident.id, "new-owner", 60), timeout=10)
    token = run_guard.set(guard)
    try:
        with acting_as("isolate-security-groups"), fail_safe():
            moved = put_back(runner.clients_for("us-east-1", None),
                             {"id": eni, "groups": [{"id": world.web_group}]})
    finally:
        run_guard.reset(token)
    stop.set()
    watcher.join()
    assert guard.taken_over.is_set(), moved.error
    assert not moved.restored and "another worker" in moved.error
    # At most the attempts sent before the takeover was seen, far fewer than the backoff's.
    assert aws_trace.count("ModifyNetworkInterfaceAttribute") < RESTORE_RETRY.attempts
