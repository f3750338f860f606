"""The database goes away mid-run — every connection to PostgreSQL dropped just after the
ENIs were sealed, refused for longer than a lease — and comes back. The run is resumed
from the store and verifies what AWS shows, not what the lost writes would have said:
`contained`, because every ENI is sealed, the profile gone, the credentials revoked, the
snapshots and the image made. Through the real endpoint against moto."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bot.scheduler import sweep
from playbooks.store import FINAL_STATES
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, start_bot, wait_for
from sandbox.tcp_proxy import TcpProxy
from tests.conftest import AwsTrace, aws_client

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    running = TcpProxy(("127.0.0.1", 5432)).start()
    yield running
    running.stop()


@pytest.fixture
def outage_bot(fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
               proxy: TcpProxy, aws_trace: AwsTrace) -> Iterator[RunningBot]:
    if not e2e_database_url.startswith("postgresql"):
        pytest.skip("the outage is PostgreSQL's")
    url = e2e_database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    running = start_bot(fake_slack, url, approvers="S0ONCALL",
                        session_factory=aws_trace.session, CORDON_LEASE_SECONDS="3")
    yield running
    proxy.restore()
    running.stop()
    assert aws_trace.undeclared() == []


def sealed_everywhere(instance_id: str) -> bool:
    return all(len(v) == 1 and v[0].startswith("cordon-sealed")
               for v in sandbox_world.groups_by_eni(instance_id).values())


def test_a_run_resumed_after_the_database_went_away_verifies_what_aws_shows(
        outage_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        proxy: TcpProxy, aws_trace: AwsTrace) -> None:
    outage_bot.slack.command(DANA, CHANNEL, f"{world.instance_id} full miner")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    incident = wait_for(lambda: outage_bot.deps.store.recent()[0])
    # The cut's verify (a describe of the sealed group) is slow: the database goes away
    # after the ENIs were sealed and before the step's record could be written.
    aws_trace.delay["DescribeSecurityGroups"] = 0.5

    def cut_when_sealed() -> None:
        wait_for(lambda: sealed_everywhere(world.instance_id), timeout=30, every=0.005)
        proxy.cut()

    watcher = threading.Thread(target=cut_when_sealed)
    watcher.start()
    outage_bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    watcher.join()
    time.sleep(5)  # longer than a lease: the worker loses it
    proxy.restore()

    def finished() -> Any:
        sweep(outage_bot.deps)  # as the scheduler does: takes over the lapsed run
        now = outage_bot.deps.store.get(incident.id)
        return now is not None and now.status in FINAL_STATES and now

    done = wait_for(finished, timeout=90, every=0.5)
    steps = {s.name: s for s in outage_bot.deps.store.steps(incident.id)}
    assert done.status == "contained", (done.summary, {
        n: (s.status, s.error_message) for n, s in steps.items()})
    assert steps["verify-containment"].status == "succeeded"
    # What AWS shows, the judge of it.
    assert sealed_everywhere(world.instance_id)
    ec2 = aws_client("ec2")
    assert ec2.describe_iam_instance_profile_associations(Filters=[
        {"Name": "instance-id", "Values": [world.instance_id]},
        {"Name": "state", "Values": ["associated"]}])["IamInstanceProfileAssociations"] == []
    tagged = [{"Name": "tag:cordon:incident", "Values": [incident.id]}]
    assert ec2.describe_snapshots(OwnerIds=["self"], Filters=tagged)["Snapshots"]
    assert len(ec2.describe_images(Owners=["self"], Filters=tagged)["Images"]) == 1
