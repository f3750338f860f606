"""`python -m bot sandbox` (`make demo`): an incident played end to end against a local
AWS and a local Slack, through the bot's real, signed HTTP endpoint. It is also the
tabletop exercise: run it to walk a team through what the bot will do."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bot.logs import setup_logging
from playbooks.models import Incident, StepRecord
from playbooks.store import FINAL_STATES
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, start_bot, wait_for
from sandbox.transcript import plain, render_channel, render_message

CHANNEL = "C0INCIDENT"
DANA, LEE, KIM, SAM = "U0DANA", "U0LEE", "U0KIM", "U0SAM"
NAMES = {DANA: "dana (responder)", LEE: "lee (on-call lead)", KIM: "kim (on-call)",
         SAM: "sam (intern)",
         CHANNEL: "incident-2231", "UCORDONBOT": "cordon"}


def ack_text(body: str) -> str:
    """What Slack shows for an ack: a plain-text body, or a JSON message."""
    try:
        return str(json.loads(body).get("text", ""))
    except ValueError:
        return body


PLAYBOOKS = ("full", "isolate", "nacl", "route", "igw", "key")


def run_sandbox(quiet: bool = False, playbook: str = "full") -> int:
    """Play one incident with `playbook`: the request, the card as the channel sees it
    before anyone decides, refused and accepted clicks, the run and its thread, checks
    read back from the local AWS — then a release, approved the same way, and checks
    that everything is back as it was."""
    if playbook not in PLAYBOOKS:
        print(f"unknown playbook {playbook!r}; one of {', '.join(PLAYBOOKS)}", file=sys.stderr)
        return 2
    setup_logging("text", "ERROR" if quiet else "WARNING")
    say = print

    aws = sandbox_world.LocalAws().start()
    aws.use()
    world = sandbox_world.seed()
    fleet = sandbox_world.join_fleet(world) if playbook in ("full", "isolate") else None
    if playbook in ("nacl", "route", "igw"):
        sandbox_world.add_network(world)
    user, key = sandbox_world.seed_leaked_key(world) if playbook == "key" else ("", "")
    fake = FakeSlack().start()
    fake.usergroups["S0ONCALL"] = [LEE, KIM]
    db = os.path.join(tempfile.mkdtemp(prefix="cordon-sandbox-"), "cordon.db")
    bot = start_bot(fake, f"sqlite:///{db}", approvers="S0ONCALL",
                    regions="us-east-1,eu-west-1")
    try:
        say("Cordon sandbox — nothing here touches a real AWS account or Slack workspace")
        say(f"  local AWS (moto)  {aws.url}")
        say(f"  local Slack API   {fake.api_url}")
        say(f"  the bot           {bot.server.url}/slack/events  (signed requests)")
        say(f"  approvers         CORDON_APPROVERS=S0ONCALL (members: {NAMES[LEE]}, "
            f"{NAMES[KIM]})")
        say(f"  playbook          {playbook}")
        say("")
        before = _state(world, playbook, user, key)
        bystander_before = sandbox_world.groups_by_eni(world.bystander_id)
        if playbook == "key":
            say(f"Before — access key {key} of IAM user {user}: {before['key']}")
        else:
            where = (f", in Auto Scaling group {fleet.asg}, target group web-prod and classic "
                     f"load balancer {fleet.classic_elb}" if fleet else "")
            say(f"Before — web-prod-3 ({world.instance_id}){where}:")
            for eni, groups in before["enis"].items():
                say(f"  {eni}: {', '.join(groups)}")
        say("")

        def person(who: str, text: str) -> None:
            say(f"@{NAMES[who]}: {text}")

        def only_they_see(who: str, text: str) -> None:
            for line in plain(text, NAMES).splitlines():
                say(f"    (only @{NAMES[who].split()[0]} sees) {line}")

        def seen_by(who: str, count: int) -> str:
            return str(wait_for(lambda: len(fake.ephemerals_for(who)) > count
                                and fake.ephemerals_for(who)[-1]))

        # 1. The responder asks.
        text = (f"key {key} found in a public repository <!channel>" if playbook == "key"
                else f"{world.instance_id} {playbook} suspected crypto-miner, outbound to "
                     "3333 <!channel>")
        person(DANA, f"/contain {text}")
        status, body = bot.slack.command(DANA, CHANNEL, text)
        if status != 200:
            say(f"the bot answered HTTP {status}: {body}")
            return 1
        only_they_see(DANA, ack_text(body))
        card = wait_for(lambda: fake.channel_messages(CHANNEL))[0]
        incident = wait_for(lambda: next((i for i in bot.deps.store.recent()
                                          if i.card_ts == card.ts), None))
        wait_for(lambda: not bot.deps.store.unsent(), timeout=30)
        say("    → the approval card is posted in the channel; before anyone decides it reads:")
        say("")
        for line in render_message(fake.message(CHANNEL, card.ts) or card, NAMES, "    | "):
            say(line)
        say("")

        # 2. The requester tries to approve their own request; someone who is not an
        # approver tries.
        for who in (DANA, SAM):
            person(who, "presses Approve")
            count = len(fake.ephemerals_for(who))
            bot.slack.click_button(who, CHANNEL, card.ts, "Approve")
            only_they_see(who, seen_by(who, count))

        # 3. The on-call approvers approve (wide playbooks need two).
        deciders = [LEE, KIM][:incident.approvals_required]
        _approve(bot, card.ts, deciders, person, say, wide=incident.approvals_required > 1)
        incident = wait_for(lambda: next(
            (i for i in bot.deps.store.recent() if i.card_ts == card.ts
             and i.status in FINAL_STATES), None), timeout=60)
        wait_for(lambda: (m := fake.message(CHANNEL, card.ts)) and m.text.endswith(
            incident.status) and not bot.deps.store.unsent(), timeout=30)
        say("")
        say("=" * 78)
        say(render_channel(fake, CHANNEL, NAMES))
        say("=" * 78)
        say("")
        checks = _contained_checks(world, fleet, incident, playbook, before, user, key,
                                   bot.deps.store.steps(incident.id))
        if playbook in ("nacl", "route", "igw"):
            # These cut the whole subnet on purpose: what is checked is that the card
            # named the bystander among what it would hit.
            others = ((incident.facts or {}).get("blast") or {}).get("others", [])
            checks["bystander billing-api-1 named in the blast radius on the card"] = any(
                o.get("id") == world.bystander_id for o in others)
        else:
            checks["bystander billing-api-1 untouched"] = (
                sandbox_world.groups_by_eni(world.bystander_id) == bystander_before)
        for name, ok in checks.items():
            say(f"  {'✅' if ok else '❌'} {name}")
        contained = all(checks.values())
        say("")

        # 4. The tabletop is over: release, approved the same way.
        release_text = f"release {incident.id} tabletop over, false alarm"
        person(DANA, f"/contain {release_text}")
        bot.slack.command(DANA, CHANNEL, release_text)
        release_card = wait_for(lambda: fake.channel_messages(CHANNEL)[1:])[0]
        release = wait_for(lambda: next((i for i in bot.deps.store.recent()
                                         if i.card_ts == release_card.ts), None))
        wait_for(lambda: not bot.deps.store.unsent(), timeout=30)
        _approve(bot, release_card.ts, [LEE, KIM][:release.approvals_required], person, say,
                 wide=release.approvals_required > 1)
        release = wait_for(lambda: next(
            (i for i in bot.deps.store.recent() if i.card_ts == release_card.ts
             and i.status in FINAL_STATES), None), timeout=60)
        wait_for(lambda: not bot.deps.store.unsent(), timeout=30)
        say("")
        for line in render_message(fake.message(CHANNEL, release_card.ts) or release_card,
                                   NAMES, "    | "):
            say(line)
        for reply in fake.thread(CHANNEL, release_card.ts):
            for line in render_message(reply, NAMES, "    ↳ "):
                say(line)
        say("")
        after = _state(world, playbook, user, key)
        released = {"release done": release.status == "released"}
        if playbook == "key":
            released["the key is active again (its stolen sessions stay revoked until "
                     "they expire)"] = after["key"] == "Active"
        else:
            released["every ENI back on its own groups"] = after["enis"] == before["enis"]
            if playbook in ("nacl", "route", "igw"):
                released["the subnet's ACL, route table and internet routes as before"] = (
                    after["network"] == before["network"])
        for name, ok in released.items():
            say(f"  {'✅' if ok else '❌'} {name}")
        verified = contained and all(released.values())
        say("")
        say("What GET /metrics now says (an excerpt):")
        for line in metrics_excerpt(bot):
            say(f"  {line}")
        say("")
        undone = "verified" if all(released.values()) else "NOT verified"
        say(f"Containment {'verified' if contained else 'NOT verified'} ({incident.id}, "
            f"{incident.status}); release {undone} ({release.id}, {release.status}).")
        return 0 if verified else 1
    finally:
        bot.stop()
        fake.stop()
        aws.stop()
        sys.stdout.flush()


def metrics_excerpt(bot: RunningBot) -> list[str]:
    """The incidents counted and the durations observed, read from the bot's /metrics
    with prometheus_client's parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(bot.server.url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    lines = []
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            if sample.name == "cordon_incidents_total" or (
                    sample.name.endswith("_seconds_sum") and family.name.startswith(
                        ("cordon_time_to_cut", "cordon_time_to_contain"))):
                lines.append(f"{sample.name}{{{labels}}} {sample.value:g}")
    return lines


def _approve(bot: RunningBot, card_ts: str, deciders: list[str],
             person: Callable[[str, str], None], say: Callable[[str], None],
             wide: bool) -> None:
    for who in deciders:
        person(who, "presses Approve" + (" and confirms the dialog naming the blast radius"
                                         if wide else ""))
        bot.slack.click_button(who, CHANNEL, card_ts, "Approve")
        time.sleep(0.2)


def _state(world: sandbox_world.World, playbook: str, user: str, key: str) -> dict[str, Any]:
    if playbook == "key":
        return {"key": sandbox_world.key_status(user, key)}
    state: dict[str, Any] = {"enis": sandbox_world.groups_by_eni(world.instance_id)}
    if playbook in ("nacl", "route", "igw"):
        state["network"] = sandbox_world.network_state(world)
    return state


def _contained_checks(world: sandbox_world.World, fleet: sandbox_world.Fleet | None,
                      incident: Incident, playbook: str, before: dict[str, Any], user: str,
                      key: str, records: list[StepRecord]) -> dict[str, bool]:
    checks = {f"incident {incident.status}": incident.status == "contained"}
    if playbook == "key":
        checks["the leaked key is inactive"] = sandbox_world.key_status(user, key) == "Inactive"
        return checks
    after = sandbox_world.groups_by_eni(world.instance_id)
    if playbook in ("full", "isolate"):
        steps = {s.name: s for s in records}
        sealed = (steps["isolate-security-groups"].details or {}).get("sealed_group", "")
        ingress, egress = sandbox_world.group_rules(sealed) if sealed else ([1], [1])
        checks["every ENI on cordon-sealed only"] = bool(after) and all(
            groups == [f"cordon-sealed ({sealed})"] for groups in after.values())
        checks["cordon-sealed has no rules"] = not ingress and not egress
    if fleet is not None:
        now = sandbox_world.describe_containment(world, fleet, incident.id)
        checks["out of the Auto Scaling group and load balancers"] = not now["in_fleet"]
        if playbook == "full":
            checks["instance profile removed"] = not now["profile"]
            checks["termination protection on"] = now["termination_protection"]
            checks["every volume snapshotted, AMI taken"] = now["evidence_complete"]
    if playbook in ("nacl", "route", "igw"):
        net = sandbox_world.network_state(world)
        what = {"nacl": ("the subnet on Cordon's deny-all network ACL",
                         net["acl"] != before["network"]["acl"]),
                "route": ("the subnet on a route table with only the local route",
                          net["routes"] == ["local"]),
                "igw": ("no route of the VPC leads to its internet gateway",
                        net["routes_to_igw"] == [])}[playbook]
        checks[what[0]] = what[1]
    return checks
