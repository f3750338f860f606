"""`/contain` by the names people have — an instance ARN, an exact Name tag, a private
IPv4 address — found across the configured regions, through the real endpoint."""

from __future__ import annotations

from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, wait_for
from tests.conftest import aws_client

CHANNEL = "C0INCIDENT"
DANA = "U0DANA"


def card_for(bot: RunningBot, text: str) -> str:
    status, _ = bot.slack.command(DANA, CHANNEL, text)
    assert status == 200
    wait_for(lambda: bot.slack.fake.channel_messages(CHANNEL))
    (incident,) = bot.deps.store.recent()
    return incident.target_id


def answer(bot: RunningBot, fake: FakeSlack, text: str) -> str:
    before = len(fake.ephemerals_for(DANA))
    bot.slack.command(DANA, CHANNEL, text)
    return str(wait_for(lambda: len(fake.ephemerals_for(DANA)) > before
                        and fake.ephemerals_for(DANA)[-1]))


def test_an_exact_name_tag_finds_the_instance(bot: RunningBot, world: sandbox_world.World
                                             ) -> None:
    assert card_for(bot, "web-prod-3 isolate miner on port 3333") == world.instance_id


def test_a_private_ip_finds_the_instance(bot: RunningBot, world: sandbox_world.World) -> None:
    inst = aws_client("ec2").describe_instances(InstanceIds=[world.instance_id])[
        "Reservations"][0]["Instances"][0]
    assert card_for(bot, f"{inst['PrivateIpAddress']} isolate miner") == world.instance_id


def test_an_instance_arn_gives_its_id_and_region(bot: RunningBot, world: sandbox_world.World
                                                 ) -> None:
    arn = f"arn:aws:ec2:us-east-1:123456789012:instance/{world.instance_id}"
    assert card_for(bot, f"{arn} isolate miner") == world.instance_id
    (incident,) = bot.deps.store.recent()
    assert incident.region == "us-east-1"


def test_a_name_on_several_instances_lists_them_and_makes_no_card(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    other = sandbox_world.seed(region="eu-west-1")  # also named web-prod-3
    said = answer(bot, fake_slack, "web-prod-3 isolate miner")
    assert "2 instances named `web-prod-3`" in said
    assert world.instance_id in said and other.instance_id in said and "eu-west-1" in said
    assert bot.deps.store.recent() == [] and fake_slack.channel_messages(CHANNEL) == []
    # With the region said, it is one.
    assert card_for(bot, "web-prod-3 region=eu-west-1 isolate miner") == other.instance_id


def test_an_unknown_name_or_address_is_said_so(bot: RunningBot, world: sandbox_world.World,
                                               fake_slack: FakeSlack) -> None:
    assert "no instance named `web-prod-9`" in answer(bot, fake_slack, "web-prod-9 isolate x y")
    assert "no instance with private IP `10.99.1.1`" in answer(bot, fake_slack,
                                                              "10.99.1.1 isolate x y")
    assert bot.deps.store.recent() == []
