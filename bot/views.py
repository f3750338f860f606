"""Modals and the App Home tab, built with slack_sdk's models so that Slack's limits
are checked; whatever came from a person or from AWS is escaped or clipped first."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from slack_sdk.models.blocks import (
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from bot.blocks import STATUS_ICON, clip, durations_line, requester, slack_date
from bot.ids import CONTAIN_MODAL, ActionId
from bot.text import escape
from playbooks.catalogue import DEFAULT_PLAYBOOK, INSTANCE_PLAYBOOKS
from playbooks.models import Incident
from playbooks.status import FINAL_STATES

TARGET, PLAYBOOK, REASON = "target", "playbook", "reason"
MAX_REASON = 500
# What a message may hold that Cordon can contain: instance ids and ARNs, access key ids.
FOUND = re.compile(r"\b(i-(?:[0-9a-f]{17}|[0-9a-f]{8})|(?:AKIA|ASIA)[A-Z0-9]{16})\b")


def ids_in(message: dict[str, Any]) -> list[str]:
    """Instance ids and access key ids in a message: its text, its blocks and its
    attachments (where other integrations put an alert's fields), in order, once each."""
    text = json.dumps({k: message.get(k) for k in ("text", "blocks", "attachments")})
    seen: list[str] = []
    for found in FOUND.findall(text):
        if found not in seen:
            seen.append(found)
    return seen


def _mrkdwn(text: str) -> MarkdownTextObject:
    return MarkdownTextObject(text=clip(text, 3000))


def contain_modal(channel: str, target: str = "", playbook: str = DEFAULT_PLAYBOOK,
                  reason: str = "", found: Sequence[str] = (), error: str = "") -> dict[str, Any]:
    """The form `/contain` alone and the message shortcut open: target, playbook, reason.
    `private_metadata` keeps the channel the card goes to."""
    options = [Option(value=name, text=name, description=clip(p.summary, 75))
               for name, p in INSTANCE_PLAYBOOKS.items()]
    initial = next((o for o in options if o.value == playbook), options[0])
    blocks: list[Block] = []
    if found:
        blocks.append(ContextBlock(elements=[_mrkdwn(
            "Found in the message: " + ", ".join(f"`{escape(f)}`" for f in found[:20])
            + (" — one request per target; the first is filled in" if len(found) > 1 else ""))]))
    blocks += [
        InputBlock(block_id=TARGET, label="Target", element=PlainTextInputElement(
            action_id="value", initial_value=clip(target, 300) or None, max_length=300,
            placeholder="i-0abc…, an instance ARN, a Name tag, a private IP, or AKIA…"),
            hint="An access key id (AKIA…/ASIA…) opens the leaked-key playbook. Several "
                 "instance ids, asg=NAME or tag:KEY=VALUE make one card for a fleet."),
        InputBlock(block_id=PLAYBOOK, label="Playbook", element=StaticSelectElement(
            action_id="value", options=options, initial_option=initial),
            hint="For an instance; an access key has its own."),
        InputBlock(block_id=REASON, label="Reason", optional=True,
                   element=PlainTextInputElement(action_id="value", multiline=True,
                                                 max_length=MAX_REASON,
                                                 initial_value=clip(reason, MAX_REASON) or None)),
    ]
    if error:
        blocks.append(SectionBlock(text=_mrkdwn(f"⚠️ {error}")))
    blocks.append(ContextBlock(elements=[_mrkdwn(
        f"The approval card is posted in <#{channel}>; an on-call approver decides there.")]))
    view = View(type="modal", callback_id=CONTAIN_MODAL, title="Contain",
                submit="Request", close="Cancel", blocks=blocks,
                private_metadata=json.dumps({"channel": channel}))
    return view.to_dict()


def form_values(view: dict[str, Any]) -> dict[str, str]:
    """What was typed and chosen in the contain form."""
    state = (view.get("state") or {}).get("values") or {}

    def value(block: str) -> str:
        item = (state.get(block) or {}).get("value") or {}
        if item.get("type") == "static_select":
            return str((item.get("selected_option") or {}).get("value") or "")
        return str(item.get("value") or "").strip()

    return {TARGET: value(TARGET), PLAYBOOK: value(PLAYBOOK) or DEFAULT_PLAYBOOK,
            REASON: value(REASON)}


def message_modal(title: str, text: str) -> dict[str, Any]:
    view = View(type="modal", title=clip(title, 24), close="Close",
                blocks=[SectionBlock(text=_mrkdwn(text))])
    return view.to_dict()


def card_link(incident: Incident) -> str:
    """The card's message in Slack (the archive link redirects into the workspace)."""
    if not incident.card_ts:
        return ""
    return (f"https://slack.com/archives/{incident.channel_id}/"
            f"p{incident.card_ts.replace('.', '')}")


def _line(incident: Incident, progress: str = "") -> str:
    link = card_link(incident)
    what = f"<{link}|{incident.id}>" if link else incident.id
    line = (f"{STATUS_ICON.get(incident.status, '')} *{what}* `{escape(incident.target_id)}` "
            f"`{incident.playbook}` — {incident.status}")
    if progress:
        line += f" — {progress}"
    line += f"\nasked by {requester(incident)} {slack_date(incident.created_at)}"
    if incident.summary and incident.status in FINAL_STATES:
        line += f"\n{escape(clip(incident.summary, 300))}"
        timed = durations_line(incident)
        line += f"\n{timed}" if timed else ""
    return line


def home_view(pending: Sequence[Incident], running: Sequence[tuple[Incident, str]],
              finished: Sequence[Incident]) -> dict[str, Any]:
    """App Home: requests waiting for approval first, then runs with their progress, then
    the last finished, each with a button to export its record."""
    blocks: list[Block] = [HeaderBlock(text="Cordon")]
    blocks.append(SectionBlock(text=_mrkdwn(
        f"*Waiting for approval* ({len(pending)})" if pending
        else "*Waiting for approval* — none")))
    blocks += [SectionBlock(text=_mrkdwn(_line(i))) for i in pending[:15]]
    blocks.append(DividerBlock())
    blocks.append(SectionBlock(text=_mrkdwn(
        f"*Running* ({len(running)})" if running else "*Running* — none")))
    blocks += [SectionBlock(text=_mrkdwn(_line(i, progress))) for i, progress in running[:15]]
    blocks.append(DividerBlock())
    blocks.append(SectionBlock(text=_mrkdwn(f"*Finished* (last {len(finished)})")))
    for incident in finished[:20]:
        blocks.append(SectionBlock(
            text=_mrkdwn(_line(incident)),
            accessory=ButtonElement(text="Export", action_id=ActionId.EXPORT.value,
                                    value=json.dumps({"incident_id": incident.id}))))
    blocks.append(ContextBlock(elements=[_mrkdwn(
        "`/contain` opens the request form; `/contain export CRD-…` posts an incident's "
        "record (Markdown and JSON) in its thread.")]))
    assert len(blocks) <= 100
    view = View(type="home", blocks=blocks)
    return view.to_dict()

