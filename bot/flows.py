"""What the listeners do, beside parsing and acking: post a card, open the form, say an
incident's status, export its record, publish App Home. Listeners of every Slack surface
call these; no listener module imports another."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks, export, grammar, views
from bot.blocks import clip, progress_line
from bot.text import escape
from playbooks.errors import BadInput, UnknownIncident
from playbooks.fleet import FleetAsk, open_fleet_request
from playbooks.logctx import incident_context
from playbooks.models import POST_CARD, Incident
from playbooks.service import ContainRequest
from playbooks.store import APPROVED, FINAL_STATES, PENDING, RUNNING

if TYPE_CHECKING:
    from bot.deps import Deps


log = logging.getLogger("cordon.flows")


def open_form(client: WebClient, trigger_id: str, channel: str, **prefill: Any) -> None:
    client.views_open(trigger_id=trigger_id, view=views.contain_modal(channel, **prefill))


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
    if cmd.is_fleet:
        fleet = open_fleet_request(deps.cordon, FleetAsk(
            instance_ids=list(cmd.instance_ids), asg=cmd.asg, tag=cmd.tag, region=cmd.region,
            account=cmd.account), cmd.playbook, cmd.reason, command["user_id"],
            command["channel_id"])
        post_card(deps, fleet, client, command.get("team_id", ""))
        return fleet
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


TargetCommand = (grammar.KeyCommand | grammar.UserCommand | grammar.RoleCommand
                 | grammar.BucketCommand)


def open_target_request(deps: Deps, cmd: TargetCommand, user: str, channel: str) -> Incident:
    """A key, user, role or bucket request (from the slash command or the form)."""
    cordon = deps.cordon
    if isinstance(cmd, grammar.KeyCommand):
        return cordon.open_key_request(cmd.key_id, cmd.reason, user, channel, cmd.options,
                                       deps.key_lookback_days)
    if isinstance(cmd, grammar.UserCommand):
        return cordon.open_user_request(cmd.user, cmd.reason, user, channel,
                                        account=cmd.account, account_id=cmd.account_id)
    if isinstance(cmd, grammar.RoleCommand):
        return cordon.open_role_request(cmd.role, cmd.reason, user, channel,
                                        account=cmd.account, account_id=cmd.account_id,
                                        options=cmd.options)
    return cordon.open_bucket_request(cmd.bucket, cmd.reason, user, channel,
                                      account=cmd.account)


def post_card(deps: Deps, incident: Incident, client: WebClient, team_id: str = "",
              queue_if_down: bool = True) -> None:
    """Post the approval card. Slack refusing it (not in the channel…) is said to the
    requester and the request dropped. Slack's Web API unreachable (no answer, a 5xx, a
    429 after the client's own retries) with `queue_if_down`: the card waits in the
    outbox and goes out when Slack answers again — the request is kept, nothing lost."""
    text, card = blocks.render_card(incident)
    try:
        resp = client.chat_postMessage(channel=incident.channel_id, text=text, blocks=card,
                                       unfurl_links=False)
    except SlackApiError as exc:
        if exc.response.status_code >= 500 or exc.response.status_code == 429:
            _card_unanswered(deps, incident, team_id, exc, queue_if_down)
            return
        deps.cordon.card_failed(incident.id)
        error = exc.response.get("error")
        hint = " Invite the Cordon app to this channel first." if error in (
            "not_in_channel", "channel_not_found") else ""
        raise BadInput(f"could not post the approval card (`{error}`).{hint} "
                       "Nothing was changed.") from exc
    except Exception as exc:  # no answer at all
        _card_unanswered(deps, incident, team_id, exc, queue_if_down)
        return
    # What the card cannot show goes to its thread, before its buttons appear.
    full_plan = blocks.render_full_plan(incident) if blocks.card_hides(incident) else []
    deps.cordon.card_posted(incident.id, incident.channel_id, str(resp["ts"]), team_id,
                            full_plan)
    if full_plan:
        deps.timeline.wake(incident.id)


def _card_unanswered(deps: Deps, incident: Incident, team_id: str, exc: Exception,
                     queue: bool) -> None:
    """Slack did not take the card: queued (`queue`) or raised again. Should it have
    landed with its answer lost, the one posted later is the card: only a click on the
    message recorded as the card decides."""
    if not queue:
        raise exc
    deps.store.enqueue(incident.id, POST_CARD, {"team_id": team_id})
    log.warning("card queued: Slack's Web API did not answer",
                extra={"incident": incident.id, "error": str(exc)[:200]})
    deps.timeline.wake(incident.id)  # tried again, backing off, until Slack answers


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
    # A fleet member's record goes to its fleet's thread; a fleet's holds every member's.
    anchor = incident if incident.card_ts or not incident.fleet_id else \
        deps.store.get(incident.fleet_id)
    if anchor is None or not anchor.card_ts:
        raise BadInput(f"{incident.id} has no card to post its record under")
    with incident_context(incident.id):
        if incident.kind == "fleet":
            files = export.fleet_files([
                (deps.cordon.report(i.id), deps.store.evidence(i.id))
                for i in [incident, *deps.store.members(incident.id)]])
        else:
            files = export.files(deps.cordon.report(incident.id),
                                 deps.store.evidence(incident.id))
        try:
            client.files_upload_v2(
                channel=anchor.channel_id, thread_ts=anchor.card_ts,
                initial_comment=f"📚 The record of {incident.id} (Markdown timeline, JSON"
                                f"{' and timeline chart' if len(files) > 2 else ''})",
                file_uploads=[{"content": content, "filename": name, "title": name}
                              for name, content in files])
        except SlackApiError as exc:
            raise BadInput(f"could not post the record of {incident.id} "
                           f"(`{exc.response.get('error')}`)") from exc
    return (f"📚 The record of {incident.id} is in its thread: "
            f"<{views.card_link(anchor)}|{', '.join(name for name, _ in files)}>")
