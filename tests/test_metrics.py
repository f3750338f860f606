"""GET /metrics, read with prometheus_client's own parser: the counts match the
incidents run, the histograms hold their lifecycle's durations, Slack's sends and AWS's
throttling answers are counted as they happened, and the example Grafana dashboard asks
only for series Cordon serves."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from playbooks.catalogue import get_playbook
from playbooks.lifecycle import Lifecycle
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.faulty_aws import FaultyAws
from sandbox.harness import RunningBot, wait_for
from tests.conftest import settle_card

CHANNEL, ELSEWHERE = "C0INCIDENT", "C0NOTJOINED"
DANA, LEE = "U0DANA", "U0LEE"
DASHBOARD = Path(__file__).resolve().parent.parent / "grafana" / "cordon-dashboard.json"


def exposition(bot: RunningBot) -> str:
    with urllib.request.urlopen(bot.server.url + "/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return str(resp.read().decode())


def scrape(bot: RunningBot) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample, by its name and labels."""
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(exposition(bot)):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def one(samples: dict[str, Any], name: str, **labels: str) -> float:
    return float(samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0))


def test_metrics_count_the_incidents_run_and_hold_their_durations(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} miner, probably")
    first = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    bot.slack.click_button(LEE, CHANNEL, first.ts, "Deny")
    wait_for(lambda: [i for i in bot.deps.store.recent() if i.status == "denied"])
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} miner on port 3333")
    second = wait_for(lambda: fake_slack.channel_messages(CHANNEL)[1:])[0]
    bot.slack.click_button(LEE, CHANNEL, second.ts, "Approve")
    contained = settle_card(bot, second.ts)
    assert contained.status == "contained"
    fake_slack.not_in.add(ELSEWHERE)
    # Slack refuses this card: the app is not in that channel.
    bot.slack.command(DANA, ELSEWHERE, f"{world.instance_id} miner seen again")
    assert "Invite the Cordon app" in wait_for(lambda: fake_slack.ephemerals_for(DANA))[0]
    wait_for(lambda: not bot.deps.store.unsent())

    m = scrape(bot)
    slack = {"playbook": "full", "source": "slack"}
    assert one(m, "cordon_incidents_total", status="denied", **slack) == 1
    assert one(m, "cordon_incidents_total", status="contained", **slack) == 1
    assert sum(m["cordon_incidents_total"].values()) == 2
    # The histograms hold the lifecycle's own durations (the denial was decided too).
    life = Lifecycle.of(contained, bot.deps.store.steps(contained.id),
                        get_playbook("full")).durations()
    assert one(m, "cordon_time_to_cut_seconds_count", **slack) == 1
    assert one(m, "cordon_time_to_cut_seconds_sum", **slack) == life["time_to_cut"]
    assert one(m, "cordon_time_to_contain_seconds_count", **slack) == 1
    assert one(m, "cordon_time_to_contain_seconds_sum", **slack) == life["time_to_contain"]
    assert one(m, "cordon_time_to_decision_seconds_count", **slack) == 2
    assert one(m, "cordon_time_to_cut_seconds_bucket", le="+Inf", **slack) == 1
    # Every message the fake Slack received came from a counted send, and the refusal too.
    posted = [msg for msg in fake_slack.messages if not msg.files]
    assert one(m, "cordon_slack_sends_total", method="chat.postMessage", result="ok") == len(
        posted)
    assert one(m, "cordon_slack_sends_total", method="chat.postMessage",
               result="not_in_channel") == 1
    assert one(m, "cordon_slack_sends_total", method="chat.update", result="ok") >= 2
    # Nothing waits to be sent, nothing runs, no intake configured.
    assert one(m, "cordon_outbox_unsent") == 0
    assert one(m, "cordon_runs_in_progress") == 0
    assert one(m, "cordon_intake_lag_seconds") == 0

    # The example dashboard asks only for series that are served.
    served = {f.name for f in text_string_to_metric_families(exposition(bot))}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = {re.sub(r"_(bucket|sum|count|total)$", "", name)
             for e in exprs for name in re.findall(r"cordon_[a-z_]+", e)}
    assert asked and asked <= served, asked - served


def test_throttling_answers_are_counted_by_action(
        faulty_bot: RunningBot, faulty: FaultyAws, world: sandbox_world.World,
        fake_slack: FakeSlack) -> None:
    faulty.add("CreateTags", "throttle", times=2)
    faulty_bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate reverse shell")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    faulty_bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    assert settle_card(faulty_bot, card.ts).status == "contained"
    answered = [c.answered for c in faulty.calls("CreateTags")]
    assert answered.count("throttle") == 2 and "forwarded" in answered
    m = scrape(faulty_bot)
    assert one(m, "cordon_aws_throttles_total", action="CreateTags") == 2
    assert sum(m["cordon_aws_throttles_total"].values()) == 2
