"""`python -m bot sandbox` (`make demo`): an incident played end to end against a local
AWS and a local Slack, through the bot's real, signed HTTP endpoint. It is also the
tabletop exercise: run it to walk a team through what the bot will do."""

from __future__ import annotations

import json
import os
import sys
import tempfile

from bot.logs import setup_logging
from bot.sandbox.fake_slack import FakeSlack
from bot.sandbox.harness import start_bot, wait_for
from bot.sandbox.transcript import plain, render_channel
from playbooks import sandbox as sandbox_world
from playbooks.store import FINAL_STATES

CHANNEL = "C0INCIDENT"
DANA, LEE, SAM = "U0DANA", "U0LEE", "U0SAM"
NAMES = {DANA: "dana (responder)", LEE: "lee (on-call lead)", SAM: "sam (intern)",
         CHANNEL: "incident-2231", "UCORDONBOT": "cordon"}


def ack_text(body: str) -> str:
    """What Slack shows for an ack: a plain-text body, or a JSON message."""
    try:
        return str(json.loads(body).get("text", ""))
    except ValueError:
        return body


def run_sandbox(quiet: bool = False) -> int:
    setup_logging("text", "ERROR" if quiet else "WARNING")
    say = print

    aws = sandbox_world.LocalAws().start()
    aws.use()
    world = sandbox_world.seed()
    fleet = sandbox_world.join_fleet(world)
    fake = FakeSlack().start()
    fake.usergroups["S0ONCALL"] = [LEE]
    db = os.path.join(tempfile.mkdtemp(prefix="cordon-sandbox-"), "cordon.db")
    bot = start_bot(fake, f"sqlite:///{db}", approvers="S0ONCALL",
                    regions="us-east-1,eu-west-1")
    try:
        say("Cordon sandbox — nothing here touches a real AWS account or Slack workspace")
        say(f"  local AWS (moto)  {aws.url}")
        say(f"  local Slack API   {fake.api_url}")
        say(f"  the bot           {bot.server.url}/slack/events  (signed requests)")
        say(f"  approvers         CORDON_APPROVERS=S0ONCALL (members: {NAMES[LEE]})")
        say("")
        before = sandbox_world.groups_by_eni(world.instance_id)
        bystander_before = sandbox_world.groups_by_eni(world.bystander_id)
        say(f"Before — web-prod-3 ({world.instance_id}), in Auto Scaling group {fleet.asg}, "
            f"target group web-prod and classic load balancer {fleet.classic_elb}:")
        for eni, groups in before.items():
            say(f"  {eni}: {', '.join(groups)}")
        say("")

        def person(user: str, text: str) -> None:
            say(f"@{NAMES[user]}: {text}")

        def only_they_see(user: str, text: str) -> None:
            for line in plain(text, NAMES).splitlines():
                say(f"    (only @{NAMES[user].split()[0]} sees) {line}")

        # 1. The responder asks.
        text = f"{world.instance_id} suspected crypto-miner, outbound to 3333 <!channel>"
        person(DANA, f"/contain {text}")
        status, body = bot.slack.command(DANA, CHANNEL, text)
        if status != 200:
            say(f"the bot answered HTTP {status}: {body}")
            return 1
        only_they_see(DANA, ack_text(body))
        card = wait_for(lambda: fake.channel_messages(CHANNEL))[0]
        say("    → the approval card is posted in the channel")

        # 2. The requester tries to approve their own request.
        person(DANA, "presses Approve")
        bot.slack.click_button(DANA, CHANNEL, card.ts, "Approve")
        only_they_see(DANA, wait_for(lambda: fake.ephemerals_for(DANA))[0])

        # 3. Someone who is not an approver tries.
        person(SAM, "presses Approve")
        bot.slack.click_button(SAM, CHANNEL, card.ts, "Approve")
        only_they_see(SAM, wait_for(lambda: fake.ephemerals_for(SAM))[0])

        # 4. The on-call lead approves.
        person(LEE, "presses Approve")
        bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
        incident = wait_for(lambda: next(
            (i for i in bot.deps.store.recent() if i.status in FINAL_STATES), None), timeout=60)
        # The card is rendered from the store: once it shows the final state, so will Slack.
        wait_for(lambda: (m := fake.message(CHANNEL, card.ts)) and m.text.endswith(
            incident.status) and not bot.deps.store.unsent(), timeout=30)
        say("")
        say("=" * 78)
        say(render_channel(fake, CHANNEL, NAMES))
        say("=" * 78)
        say("")

        after = sandbox_world.groups_by_eni(world.instance_id)
        say(f"After — web-prod-3 ({world.instance_id}):")
        for eni, groups in after.items():
            say(f"  {eni}: {', '.join(groups)}")
        steps = {s.name: s for s in bot.deps.store.steps(incident.id)}
        sealed_id = (steps["isolate-security-groups"].details or {}).get("sealed_group", "")
        ingress, egress = sandbox_world.group_rules(sealed_id) if sealed_id else ([1], [1])
        bystander_after = sandbox_world.groups_by_eni(world.bystander_id)
        world_now = sandbox_world.describe_containment(world, fleet, incident.id)
        checks = {
            "incident contained": incident.status == "contained",
            "every ENI on cordon-sealed only": bool(after) and all(
                groups == [f"cordon-sealed ({sealed_id})"] for groups in after.values()),
            "cordon-sealed has no rules": not ingress and not egress,
            "out of the Auto Scaling group and load balancers": not world_now["in_fleet"],
            "instance profile removed": not world_now["profile"],
            "termination protection on": world_now["termination_protection"],
            "every volume snapshotted, AMI taken": world_now["evidence_complete"],
            "bystander billing-api-1 untouched": bystander_after == bystander_before,
        }
        say("")
        for name, ok in checks.items():
            say(f"  {'✅' if ok else '❌'} {name}")
        verified = all(checks.values())
        say("")
        say(f"Containment {'verified' if verified else 'NOT verified'} "
            f"({incident.id}, {incident.status}).")
        return 0 if verified else 1
    finally:
        bot.stop()
        fake.stop()
        aws.stop()
        sys.stdout.flush()
