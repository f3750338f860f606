"""The contain form (from `/contain` alone and from the "Contain…" message shortcut).
Every entry ends in the same calls as the slash command: the same validation, the same
card, the same authorisation of every click."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App
from slack_sdk import WebClient

from bot import grammar, views
from bot.blocks import clip, error_text
from bot.flows import TargetCommand, open_containment, open_form, open_target_request, post_card
from bot.ids import CONTAIN_MODAL, MESSAGE_SHORTCUT
from bot.text import escape
from playbooks.errors import BadInput, CordonError

if TYPE_CHECKING:
    from bot.deps import Deps

log = logging.getLogger("cordon.forms")


def parse_form(values: dict[str, str]) -> grammar.Command:
    """The form's fields through the slash command's grammar; BadInput names the field."""
    target, reason = values[views.TARGET], values[views.REASON]
    if not target:
        raise FieldError(views.TARGET, "Say which instance, access key, user, role or bucket.")
    if len(reason) > views.MAX_REASON:
        raise FieldError(views.REASON, f"Keep the reason under {views.MAX_REASON} characters.")
    if grammar.KEY_ID.match(target.upper()):
        return grammar.parse(f"key {target.upper()}").model_copy(update={"reason": reason})
    if target.split()[0].lower() in ("user", "role", "bucket") or (
            target.startswith("arn:") and (":iam::" in target or ":s3:::" in target)):
        # A user, role or bucket: its own playbook, whatever the playbook field says.
        try:
            cmd = grammar.parse(target)
        except BadInput as exc:
            raise FieldError(views.TARGET, str(exc)) from exc
        return cmd.model_copy(update={"reason": reason})
    words = target.replace(",", " ").split()
    fleet = (target.startswith(("asg=", "tag:")) or (len(words) > 1
             and all(grammar.INSTANCE_ID.match(w.lower()) for w in words)))
    if fleet:
        typed = " ".join(words)  # a fleet: several ids, an Auto Scaling group, a tag
    elif len(words) > 1 or target.lower() in grammar.VERBS:
        typed = f'"{target}"' if '"' not in target else target
    else:
        typed = target
    try:
        cmd = grammar.parse(typed)
    except BadInput as exc:
        raise FieldError(views.TARGET, str(exc)) from exc
    if not isinstance(cmd, grammar.ContainCommand):
        raise FieldError(views.TARGET, "An instance (id, ARN, Name tag, private IP) or an "
                                       "access key id.")
    playbook = values[views.PLAYBOOK]
    if playbook not in grammar.PLAYBOOKS:
        raise FieldError(views.PLAYBOOK, f"Unknown playbook {playbook}.")
    if cmd.is_fleet and playbook not in grammar.FLEET_PLAYBOOKS:
        raise FieldError(views.PLAYBOOK, "A fleet takes " + " or ".join(
            grammar.FLEET_PLAYBOOKS) + ": the subnet-wide playbooks are per instance.")
    return cmd.model_copy(update={"playbook": playbook, "reason": reason})


class FieldError(BadInput):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def register(app: App, deps: Deps) -> None:
    def ack_form(ack: Ack, view: dict[str, Any]) -> None:
        values = views.form_values(view)
        try:
            parse_form(values)
        except FieldError as exc:
            ack(response_action="errors", errors={exc.field: clip(str(exc), 150)})
            return
        ack(response_action="update", view=views.message_modal(
            "Contain", f"🔎 Looking up `{escape(values[views.TARGET])}`…"))

    def process_form(body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        values = views.form_values(view)
        channel = json.loads(view.get("private_metadata") or "{}").get("channel", "")
        user = body["user"]["id"]
        team = (body.get("team") or {}).get("id", "")
        try:
            cmd = parse_form(values)
            if isinstance(cmd, TargetCommand):
                incident = open_target_request(deps, cmd, user, channel)
                post_card(deps, incident, client, team)
            else:
                assert isinstance(cmd, grammar.ContainCommand)
                incident = open_containment(deps, cmd, {"user_id": user, "channel_id": channel,
                                                        "team_id": team}, client)
        except CordonError as exc:
            # Shown on the form, with what was typed, to correct and send again.
            client.views_update(view_id=view["id"], view=views.contain_modal(
                channel, values[views.TARGET], values[views.PLAYBOOK], values[views.REASON],
                error=error_text(exc)))
            return
        except Exception:
            log.exception("contain form failed")
            client.views_update(view_id=view["id"], view=views.message_modal(
                "Contain", "⚠️ Cordon hit an internal error; nothing was requested. "
                           "Try `/contain` in the channel."))
            return
        client.views_update(view_id=view["id"], view=views.message_modal(
            "Requested", f"The approval card for `{incident.target_id}` is in <#{channel}> "
                         f"(<{views.card_link(deps.store.get(incident.id) or incident)}|"
                         f"{incident.id}>); an on-call approver decides there."))

    app.view(CONTAIN_MODAL)(ack=ack_form, lazy=[process_form])

    def on_message_shortcut(ack: Ack, shortcut: dict[str, Any], client: WebClient) -> None:
        ack()
        message = shortcut.get("message") or {}
        found = views.ids_in(message)
        first_line = (message.get("text") or "").strip().splitlines()[:1]
        reason = f"From an alert: {first_line[0]}" if first_line else ""
        open_form(client, shortcut["trigger_id"], shortcut["channel"]["id"],
                  target=found[0] if found else "", reason=reason, found=found)

    app.shortcut(MESSAGE_SHORTCUT)(on_message_shortcut)
