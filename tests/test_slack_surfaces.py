"""The contain form, the message shortcut, App Home, exports, console links and the
card's progress — through the real endpoint with signed requests (slash commands, view
submissions, shortcuts, Events API) and the fake Slack Web API."""

from __future__ import annotations

import io
import json
from typing import Any

from PIL import Image

from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, wait_for
from tests.conftest import settle_card

CHANNEL = "C0INCIDENT"
DANA, LEE, SAM = "U0DANA", "U0LEE", "U0SAM"


def open_form(bot: RunningBot, fake: FakeSlack) -> str:
    before = set(fake.views)
    status, body = bot.slack.command(DANA, CHANNEL, "")
    assert status == 200 and body.strip() in ("", "{}")  # the form, no text
    return str(wait_for(lambda: next(iter(set(fake.views) - before), None)))


def blocks_text(view: dict[str, Any]) -> str:
    return json.dumps(view, ensure_ascii=False)


def test_contain_alone_opens_the_form_and_its_submission_makes_the_card(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    view_id = open_form(bot, fake_slack)
    form = fake_slack.views[view_id]["view"]
    playbooks = next(b for b in form["blocks"] if b["block_id"] == "playbook")
    names = [o["value"] for o in playbooks["element"]["options"]]
    assert names[:2] == ["full", "isolate"] and "nacl" in names
    assert all(o.get("description") for o in playbooks["element"]["options"])
    assert json.loads(form["private_metadata"]) == {"channel": CHANNEL}
    status, body = bot.slack.submit_view(DANA, view_id, {
        "target": "web-prod-3", "playbook": "isolate", "reason": "miner <!channel>"})
    assert status == 200 and json.loads(body)["response_action"] == "update"
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    (incident,) = bot.deps.store.recent()
    assert incident.target_id == world.instance_id and incident.playbook == "isolate"
    assert incident.requester == DANA and incident.reason == "miner <!channel>"
    assert "&lt;!channel&gt;" in blocks_text({"b": card.blocks})
    done = wait_for(lambda: "Requested" in blocks_text(fake_slack.views[view_id]["view"])
                    and fake_slack.views[view_id]["view"])
    assert incident.id in blocks_text(done)
    # The same card as /contain: an approver approves it there.
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    assert settle_card(bot, card.ts).status == "contained"


def test_the_form_shows_errors_on_its_fields_and_changes_nothing(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    view_id = open_form(bot, fake_slack)
    _, body = bot.slack.submit_view(DANA, view_id, {
        "target": "i-12345", "playbook": "isolate", "reason": "x"})
    answer = json.loads(body)
    assert answer["response_action"] == "errors"
    assert "is not an instance id" in answer["errors"]["target"]
    _, body = bot.slack.submit_view(DANA, view_id, {
        "target": "", "playbook": "isolate", "reason": "x"})
    assert "Say which instance" in json.loads(body)["errors"]["target"]
    # A target that is well formed but not found: said on the form, with what was typed.
    bot.slack.submit_view(DANA, view_id, {"target": "web-prod-9", "playbook": "full",
                                          "reason": "typo"})
    shown = wait_for(lambda: "no instance named" in blocks_text(
        fake_slack.views[view_id]["view"]) and fake_slack.views[view_id]["view"])
    target = next(b for b in shown["blocks"] if b.get("block_id") == "target")
    assert target["element"]["initial_value"] == "web-prod-9"
    assert bot.deps.store.recent() == [] and fake_slack.channel_messages(CHANNEL) == []


def test_the_message_shortcut_prefills_the_form_from_an_alert(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    alert = {"ts": "1700000000.000100", "type": "message", "text": "GuardDuty finding",
             "attachments": [{"fields": [
                 {"title": "Resource", "value": f"Instance {world.instance_id}"},
                 {"title": "Key", "value": "AKIAIOSFODNN7EXAMPLE"}]}]}
    status, _ = bot.slack.message_shortcut(SAM, CHANNEL, alert)
    assert status == 200
    view = wait_for(lambda: next(iter(fake_slack.views.values()), None))["view"]
    text = blocks_text(view)
    assert world.instance_id in text and "AKIAIOSFODNN7EXAMPLE" in text
    target = next(b for b in view["blocks"] if b.get("block_id") == "target")
    assert target["element"]["initial_value"] == world.instance_id
    reason = next(b for b in view["blocks"] if b.get("block_id") == "reason")
    assert reason["element"]["initial_value"] == "From an alert: GuardDuty finding"


def test_app_home_lists_pending_running_and_finished_with_export(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} isolate miner")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    # The card is on Slack a moment before its ts is recorded: then Home links to it.
    wait_for(lambda: all(i.card_ts for i in bot.deps.store.recent()))
    bot.slack.event({"type": "app_home_opened", "user": LEE, "tab": "home",
                     "channel": "D0HOME"})
    home = wait_for(lambda: fake_slack.homes.get(LEE))
    text = blocks_text(home)
    (incident,) = bot.deps.store.recent()
    assert "*Waiting for approval* (1)" in text and incident.id in text
    assert f"p{card.ts.replace('.', '')}" in text  # a link to the card
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    settle_card(bot, card.ts)
    fake_slack.homes.clear()
    bot.slack.event({"type": "app_home_opened", "user": LEE, "tab": "home",
                     "channel": "D0HOME"})
    home = wait_for(lambda: fake_slack.homes.get(LEE))
    export = next(b["accessory"] for b in home["blocks"]
                  if b.get("accessory", {}).get("action_id") == "cordon_export")
    assert json.loads(export["value"]) == {"incident_id": incident.id}
    finished = next(b["text"]["text"] for b in home["blocks"]
                    if b.get("accessory", {}).get("action_id") == "cordon_export")
    assert "⏱ request → card" in finished and "→ contained" in finished
    # The Export button posts the record in the incident's thread.
    payload = {"type": "block_actions", "team": {"id": "T0SANDBOX"},
               "user": {"id": LEE, "team_id": "T0SANDBOX"}, "api_app_id": "A0CORDON",
               "container": {"type": "view", "view_id": "VHOME"},
               "view": {"id": "VHOME", "type": "home"}, "trigger_id": "1.2",
               "actions": [{"action_id": "cordon_export", "block_id": "x",
                            "value": export["value"], "type": "button"}]}
    fake_slack.homes.clear()
    bot.slack._interaction(payload)
    files = wait_for(lambda: [f for m in fake_slack.thread(CHANNEL, card.ts)
                              for f in m.files if f["name"].endswith(RECORD_FILES)])
    assert sorted(f["name"] for f in files) == [f"{incident.id}-record.json",
                                                f"{incident.id}-record.md",
                                                f"{incident.id}-timeline.png"]
    assert "is in its thread" in blocks_text(wait_for(lambda: fake_slack.homes.get(LEE)))


RECORD_FILES = ("-record.md", "-record.json", "-timeline.png")


def test_export_posts_the_whole_record_as_markdown_and_json(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} miner on port 3333")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    bot.slack.click_button(DANA, CHANNEL, card.ts, "Approve")  # refused: own request
    wait_for(lambda: fake_slack.ephemerals_for(DANA))
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = settle_card(bot, card.ts)
    status, body = bot.slack.command(SAM, CHANNEL, f"export {world.instance_id}")
    assert status == 200 and "Exporting" in body
    files = wait_for(lambda: {f["name"]: f["content"] for m in fake_slack.thread(CHANNEL, card.ts)
                              for f in m.files if f["name"].endswith(RECORD_FILES)})
    assert sorted(files) == [f"{incident.id}-record.json", f"{incident.id}-record.md",
                             f"{incident.id}-timeline.png"]
    record = json.loads(files[f"{incident.id}-record.json"])
    # The lifecycle: every stage's time, in order, and the durations between them.
    times = record["times"]
    stages = ["requested", "card_posted", "decided", "first_change", "cut_verified", "ended"]
    assert all(times[k] for k in stages), times
    assert [times[k] for k in stages] == sorted(times[k] for k in stages)
    durations = record["durations_seconds"]
    assert all(durations[k] is not None and durations[k] >= 0 for k in (
        "request_to_card", "card_to_decision", "decision_to_cut", "cut_to_contained",
        "time_to_decision", "time_to_cut", "time_to_contain"))
    assert durations["time_to_cut"] == durations["decision_to_cut"]
    assert durations["time_to_contain"] >= durations["time_to_cut"]
    # The chart: a real PNG that an image library decodes.
    png = files[f"{incident.id}-timeline.png"]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png)) as image:
        image.verify()
        assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 200
    assert [d["outcome"] for d in record["decisions"]][:1] == ["refused: own request"]
    assert any(d["outcome"] == "accepted" and d["user"] == LEE for d in record["decisions"])
    steps = {s["name"]: s for s in record["steps"]}
    assert steps["isolate-security-groups"]["status"] == "succeeded"
    assert steps["isolate-security-groups"]["verified"]
    assert steps["isolate-security-groups"]["prior_state"]["enis"]
    evidence = {e["name"]: e for e in record["evidence"]}
    stored = {e.name: e for e in bot.deps.store.evidence(incident.id)}
    assert evidence and {n: e["sha256"] for n, e in evidence.items()} == {
        n: e.sha256 for n, e in stored.items()}
    assert record["snapshots"] and record["image"].startswith("ami-")
    md = files[f"{incident.id}-record.md"].decode()
    assert "| refused: own request |" in md and record["image"] in md
    assert all(f"SHA-256 `{e.sha256}`" in md for e in stored.values())
    assert f"#InstanceDetails:instanceId={world.instance_id}" in md
    assert "is in its thread" in wait_for(lambda: fake_slack.ephemerals_for(SAM))[-1]


def test_the_thread_links_to_the_console_and_the_card_shows_progress(
        bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    bot.slack.command(DANA, CHANNEL, f"{world.instance_id} miner on port 3333")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    assert f"#InstanceDetails:instanceId={world.instance_id}" in blocks_text(
        {"b": card.blocks})
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    incident = settle_card(bot, card.ts)
    thread = [m.text for m in fake_slack.thread(CHANNEL, card.ts)]
    snapshot = next(t for t in thread if "*snapshot-volumes*" in t)
    assert "#SnapshotDetails:snapshotId=snap-" in snapshot
    image = next(t for t in thread if "*create-image*" in t)
    assert "#ImageDetails:imageId=ami-" in image
    # While it ran, the card said how far it had got; updates in a row were sent as one.
    updates = [json.dumps(c.get("blocks")) for c in fake_slack.calls_to("chat.update")]
    assert any(" steps done" in u for u in updates)
    steps = len(bot.deps.store.steps(incident.id))
    assert len(updates) <= steps + 3


def test_the_slack_rules_catch_what_slack_would_misread() -> None:
    """The checks every test applies to what Cordon sends can fail."""
    from sandbox.slack_rules import blocks_problems, message_problems, text_problems

    assert text_problems("use `/contain <instance>`", "t")
    assert text_problems("hey <!here>", "t")
    assert text_problems("<https://x.example/?a=1&b=2|link>", "t")
    assert text_problems("x" * 4001, "t")
    assert not text_problems("<@U0LEE> see <https://x.example/?a=1&amp;b=2|link> &lt;x&gt;",
                             "t")
    assert blocks_problems([{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}],
                           "b")
    assert message_problems("chat.postMessage", {"text": "ok", "blocks": [
        {"type": "section", "text": {"type": "mrkdwn", "text": "a <b>"}}]})
