"""`/contain …`: parse, look up, post the approval card."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks, grammar
from bot.flows import (
    TargetCommand,
    open_containment,
    open_form,
    open_target_request,
    post_card,
    post_export,
    status_text,
)
from bot.ids import COMMAND
from bot.listeners import replies_errors
from bot.text import escape
from playbooks.errors import BadInput, CordonError

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
            ack(text=blocks.render_error(exc))
            return
        if isinstance(cmd, grammar.HelpCommand):
            ack(text=blocks.render_help())
        elif isinstance(cmd, grammar.ContainCommand):
            ack(text=f"🔎 Looking up `{escape(cmd.target)}`…")
        elif isinstance(cmd, grammar.ReleaseCommand):
            ack(text=f"🔎 Looking up what was done to `{escape(cmd.query)}`…")
        elif isinstance(cmd, grammar.KeyCommand):
            ack(text=f"🔎 Looking up access key `{escape(cmd.key_id)}`…")
        elif isinstance(cmd, grammar.UserCommand):
            ack(text=f"🔎 Looking up IAM user `{escape(cmd.user)}`…")
        elif isinstance(cmd, grammar.RoleCommand):
            ack(text=f"🔎 Looking up IAM role `{escape(cmd.role)}` and what uses it…")
        elif isinstance(cmd, grammar.BucketCommand):
            ack(text=f"🔎 Reading S3 bucket `{escape(cmd.bucket)}`'s access settings…")
        elif isinstance(cmd, grammar.ExportCommand):
            ack(text=f"📚 Exporting the record of `{escape(cmd.query)}`…")
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
        elif isinstance(cmd, TargetCommand):
            incident = open_target_request(deps, cmd, command["user_id"],
                                                 command["channel_id"])
            post_card(deps, incident, client, command.get("team_id", ""))

    app.command(COMMAND)(ack=ack_contain, lazy=[process_contain])
