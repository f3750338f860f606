"""CORDON_ASG_DECREMENT=true on a group at its minimum size: AWS refuses to lower the
desired capacity below the minimum, so the detach goes again without lowering it, the
instance is cut, and the thread says the group launches a replacement. moto does not
enforce the minimum: the refusal is AWS's, answered by the fault hook (its message as
AWS words it)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, start_bot, wait_for
from tests.conftest import AwsTrace, aws_client, settle_card

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"


@pytest.fixture
def decrementing_bot(fake_slack: FakeSlack, world: sandbox_world.World, tmp_path: Any,
                     aws_trace: AwsTrace) -> Iterator[RunningBot]:
    running = start_bot(fake_slack, f"sqlite:///{tmp_path}/cordon.db", approvers="S0ONCALL",
                        session_factory=aws_trace.session, CORDON_ASG_DECREMENT="true")
    yield running
    running.stop()
    assert aws_trace.undeclared() == []


def test_a_group_at_its_minimum_is_left_without_lowering_it_and_the_instance_is_cut(
        decrementing_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    fleet = sandbox_world.join_fleet(world)
    aws_client("autoscaling").update_auto_scaling_group(
        AutoScalingGroupName=fleet.asg, MinSize=1, DesiredCapacity=1)
    aws_trace.fail("DetachInstances", "ValidationError",
                   f"AutoScalingGroup {fleet.asg} has min-size=1, max-size=4, and "
                   "desired-size=1. To detach 1 instance, please update the AutoScalingGroup "
                   "sizes appropriately.")
    decrementing_bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    decrementing_bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = settle_card(decrementing_bot, card.ts)
    assert incident.status == "contained", incident.summary
    detaches = [p for op, p in aws_trace.calls if op == "DetachInstances"]
    assert [p["ShouldDecrementDesiredCapacity"] for p in detaches] == [True, False]
    assert aws_client("autoscaling").describe_auto_scaling_instances(
        InstanceIds=[world.instance_id])["AutoScalingInstances"] == []
    assert all(len(v) == 1 and v[0].startswith("cordon-sealed")
               for v in sandbox_world.groups_by_eni(world.instance_id).values())
    said = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    assert any("at its minimum size" in t and "launches a replacement" in t for t in said)
