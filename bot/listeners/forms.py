"""The contain form (from `/contain` alone and from the "Contain…" message shortcut),
App Home, and exports. Every entry ends in the same calls as the slash command: the
same validation, the same card, the same authorisation of every click."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import export, grammar, views
from bot.blocks import clip, progress_line
from bot.ids import CONTAIN_MODAL, MESSAGE_SHORTCUT, ActionId
from playbooks.errors import BadInput, CordonError, UnknownIncident
from playbooks.logctx import incident_context
from playbooks.store import APPROVED, FINAL_STATES, PENDING, RUNNING, Incident

if TYPE_CHECKING:
    from bot.deps import Deps

log = logging.getLogger("cordon.forms")


def open_form(client: WebClient, trigger_id: str, channel: str, **prefill: Any) -> None:
    client.views_open(trigger_id=trigger_id, view=views.contain_modal(channel, **prefill))


def parse_form(values: dict[str, str]) -> grammar.Command:
    """The form's fields through the slash command's grammar; BadInput names the field."""
    target, reason = values[views.TARGET], values[views.REASON]
    if not target:
        raise FieldError(views.TARGET, "Say which instance or access key.")
    if len(reason) > views.MAX_REASON:
        raise FieldError(views.REASON, f"Keep the reason under {views.MAX_REASON} characters.")
    if grammar.KEY_ID.match(target.upper()):
        return grammar.parse(f"key {target.upper()}").model_copy(update={"reason": reason})
    if len(target.split()) > 1 or target.lower() in grammar.VERBS:
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
    return cmd.model_copy(update={"playbook": playbook, "reason": reason})


class FieldError(BadInput):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def register(app: App, deps: Deps) -> None:
    from bot.listeners.commands import open_containment, post_card

    def ack_form(ack: Ack, view: dict[str, Any]) -> None:
        values = views.form_values(view)
        try:
            parse_form(values)
        except FieldError as exc:
            ack(response_action="errors", errors={exc.field: clip(str(exc), 150)})
            return
        ack(response_action="update", view=views.message_modal(
            "Contain", f"🔎 Looking up `{values[views.TARGET]}`…"))

    def process_form(body: dict[str, Any], view: dict[str, Any], client: WebClient) -> None:
        values = views.form_values(view)
        channel = json.loads(view.get("private_metadata") or "{}").get("channel", "")
        user = body["user"]["id"]
        team = (body.get("team") or {}).get("id", "")
        try:
            cmd = parse_form(values)
            if isinstance(cmd, grammar.KeyCommand):
                incident = deps.cordon.open_key_request(
                    cmd.key_id, cmd.reason, user, channel, cmd.options, deps.key_lookback_days)
                post_card(deps, incident, client, team)
            else:
                assert isinstance(cmd, grammar.ContainCommand)
                incident = open_containment(deps, cmd, {"user_id": user, "channel_id": channel,
                                                        "team_id": team}, client)
        except CordonError as exc:
            # Shown on the form, with what was typed, to correct and send again.
            client.views_update(view_id=view["id"], view=views.contain_modal(
                channel, values[views.TARGET], values[views.PLAYBOOK], values[views.REASON],
                error=str(exc)))
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

    def on_home(event: dict[str, Any], client: WebClient) -> None:
        if event.get("tab", "home") != "home":
            return
        publish_home(deps, client, event["user"])

    app.event("app_home_opened")(on_home)

    def ack_now(ack: Ack) -> None:
        ack()

    def on_export_click(body: dict[str, Any], client: WebClient) -> None:
        incident_id = json.loads(body["actions"][0]["value"])["incident_id"]
        try:
            note = post_export(deps, client, incident_id)
        except CordonError as exc:
            note = f"⚠️ {exc}"
        publish_home(deps, client, body["user"]["id"], note)

    app.action(ActionId.EXPORT.value)(ack=ack_now, lazy=[on_export_click])


def publish_home(deps: Deps, client: WebClient, user: str, note: str = "") -> None:
    recent = deps.store.recent(limit=200)
    pending = [i for i in recent if i.status == PENDING]
    running = [(i, progress_line(deps.store.steps(i.id))) for i in recent
               if i.status in (APPROVED, RUNNING)]
    finished = [i for i in recent if i.status in FINAL_STATES][:20]
    view = views.home_view(pending, running, finished)
    if note:
        view["blocks"].insert(1, {"type": "section", "text": {"type": "mrkdwn",
                                                              "text": clip(note, 3000)}})
    client.views_publish(user_id=user, view=view)


def find_incident(deps: Deps, query: str) -> Incident:
    if query.startswith("CRD-"):
        return deps.cordon.get(query)
    found = deps.store.for_target(query, limit=1)
    if not found:
        raise UnknownIncident(f"no incident for `{query}`")
    return found[0]


def post_export(deps: Deps, client: WebClient, query: str) -> str:
    """The incident's record, as Markdown and JSON, in its thread. Returns what was done."""
    incident = find_incident(deps, query)
    if not incident.card_ts:
        raise BadInput(f"{incident.id} has no card to post its record under")
    with incident_context(incident.id):
        files = export.files(deps.cordon.report(incident.id), deps.store.evidence(incident.id))
        try:
            client.files_upload_v2(
                channel=incident.channel_id, thread_ts=incident.card_ts,
                initial_comment=f"📚 The record of {incident.id} (Markdown timeline and JSON)",
                file_uploads=[{"content": content, "filename": name, "title": name}
                              for name, content in files])
        except SlackApiError as exc:
            raise BadInput(f"could not post the record of {incident.id} "
                           f"(`{exc.response.get('error')}`)") from exc
    return (f"📚 The record of {incident.id} is in its thread: "
            f"<{views.card_link(incident)}|{', '.join(name for name, _ in files)}>")
