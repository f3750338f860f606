"""`/contain …`: parse, look up, post the approval card."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks, grammar
from bot.ids import COMMAND
from bot.listeners import replies_errors
from bot.listeners.forms import open_form, post_export
from bot.text import escape
from playbooks.errors import BadInput, CordonError
from playbooks.service import ContainRequest
from playbooks.store import Incident

if TYPE_CHECKING:
    from bot.deps import Deps


def register(app: App, deps: Deps) -> None:
    def ack_contain(ack: Ack, command: dict[str, Any], client: WebClient,
                    respond: Respond) -> None:
        if not command.get("text", "").strip():
            # `/contain` alone: the form (the trigger is good for 3 seconds).
            ack()
            try:
                open_form(client, command["trigger_id"], command["channel_id"])
            except SlackApiError as exc:
                respond(text=blocks.render_error(
                    f"could not open the form (`{exc.response.get('error')}`); type "
                    "`/contain help` for the command instead."), response_type="ephemeral")
            return
        try:
            cmd = grammar.parse(command.get("text", ""))
        except BadInput as exc:
            ack(text=blocks.render_error(str(exc)))
            return
        if isinstance(cmd, grammar.HelpCommand):
            ack(text=blocks.render_help())
        elif isinstance(cmd, grammar.ContainCommand):
            ack(text=f"🔎 Looking up `{escape(cmd.target)}`…")
        elif isinstance(cmd, grammar.ReleaseCommand):
            ack(text=f"🔎 Looking up what was done to `{cmd.query}`…")
        elif isinstance(cmd, grammar.KeyCommand):
            ack(text=f"🔎 Looking up access key `{cmd.key_id}`…")
        elif isinstance(cmd, grammar.ExportCommand):
            ack(text=f"📚 Exporting the record of `{cmd.query}`…")
        else:
            ack()

    @replies_errors
    def process_contain(respond: Respond, command: dict[str, Any], client: WebClient) -> None:
        try:
            cmd = grammar.parse(command.get("text", ""))
        except CordonError:
            return  # already answered in the ack
        if isinstance(cmd, grammar.StatusCommand):
            respond(text=status_text(deps, cmd), response_type="ephemeral")
        elif isinstance(cmd, grammar.ContainCommand):
            open_containment(deps, cmd, command, client)
        elif isinstance(cmd, grammar.ReleaseCommand):
            incident = deps.cordon.open_release(cmd.query, cmd.reason, command["user_id"],
                                                command["channel_id"])
            post_card(deps, incident, client, command.get("team_id", ""))
        elif isinstance(cmd, grammar.ExportCommand):
            respond(text=post_export(deps, client, cmd.query), response_type="ephemeral")
        elif isinstance(cmd, grammar.KeyCommand):
            incident = deps.cordon.open_key_request(
                cmd.key_id, cmd.reason, command["user_id"], command["channel_id"],
                cmd.options, deps.key_lookback_days)
            post_card(deps, incident, client, command.get("team_id", ""))

    app.command(COMMAND)(ack=ack_contain, lazy=[process_contain])


def status_text(deps: Deps, cmd: grammar.StatusCommand) -> str:
    if cmd.query is None:
        return blocks.render_status_list(deps.cordon.recent())
    if cmd.query.startswith("CRD-"):
        return blocks.render_status_detail(deps.cordon.report(cmd.query))
    reports = deps.cordon.reports_for_target(cmd.query)
    if not reports:
        return f"No incidents for `{escape(cmd.query)}`."
    return "\n\n".join(blocks.render_status_detail(r) for r in reports)


def open_containment(deps: Deps, cmd: grammar.ContainCommand, command: dict[str, Any],
                     client: WebClient) -> Incident:
    instance_id, region, account = cmd.instance_id, cmd.region, cmd.account
    if not instance_id:  # by Name tag or private IP: found first, in every place
        instance_id, region, account = deps.cordon.resolve_instance(
            cmd.name, cmd.private_ip, cmd.region, cmd.account)
    facts = deps.cordon.lookup_instance(instance_id, region, account)
    request = ContainRequest(
        instance_id=instance_id,
        playbook=cmd.playbook,
        reason=cmd.reason,
        requester=command["user_id"],
        channel_id=command["channel_id"],
        options=cmd.options,
    )
    incident = deps.cordon.open_request(request, facts)
    post_card(deps, incident, client, command.get("team_id", ""))
    return incident


def post_card(deps: Deps, incident: Incident, client: WebClient, team_id: str = "") -> None:
    text, card = blocks.render_card(incident)
    try:
        resp = client.chat_postMessage(channel=incident.channel_id, text=text, blocks=card,
                                       unfurl_links=False)
    except SlackApiError as exc:
        deps.cordon.card_failed(incident.id)
        error = exc.response.get("error")
        hint = " Invite the Cordon app to this channel first." if error in (
            "not_in_channel", "channel_not_found") else ""
        raise BadInput(f"could not post the approval card (`{error}`).{hint} "
                       "Nothing was changed.") from exc
    # What the card cannot show goes to its thread, before its buttons appear.
    full_plan = blocks.render_full_plan(incident) if blocks.card_hides(incident) else []
    deps.cordon.card_posted(incident.id, incident.channel_id, str(resp["ts"]), team_id,
                            full_plan)
    if full_plan:
        deps.timeline.wake(incident.id)
