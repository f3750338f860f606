"""Approve, Deny and Retry clicks — and Keep and Release on an automatic containment's
card — authorised on the server for every click."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond

from bot.blocks import render_auto_reviewed, render_retry
from bot.flows import post_card
from bot.ids import ActionId
from bot.listeners import replies_errors
from playbooks.errors import BadInput
from playbooks.logctx import incident_context
from playbooks.models import THREAD
from playbooks.service import Click

if TYPE_CHECKING:
    from bot.deps import Deps

log = logging.getLogger("cordon.actions")


def _clicked_incident(body: dict[str, Any]) -> str:
    try:
        value = json.loads(body["actions"][0]["value"])
        return str(value["incident_id"])
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise BadInput("this button carries no incident; nothing was changed") from exc


def _click(body: dict[str, Any]) -> Click:
    """Who clicked, where: the service checks it is the incident's own card."""
    container = body.get("container") or {}
    message = body.get("message") or {}
    return Click(user=str(body["user"]["id"]),
                 channel=str((body.get("channel") or {}).get("id")
                             or container.get("channel_id") or ""),
                 message_ts=str(container.get("message_ts") or message.get("ts") or ""),
                 team=str((body.get("team") or {}).get("id") or ""))


def register(app: App, deps: Deps) -> None:
    def ack_now(ack: Ack) -> None:
        ack()

    def on_click(body: dict[str, Any], action: str) -> None:
        incident_id = _clicked_incident(body)
        click = _click(body)
        with incident_context(incident_id):
            messages = []
            if action == "retry":
                said = render_retry(deps.cordon.get(incident_id), click.user)
                messages = [(THREAD, {"text": said})]
            # The card's new state is written with the decision itself; send it now.
            deps.cordon.click(incident_id, click, action, messages)
            deps.timeline.wake(incident_id)

    @replies_errors
    def handle_approve_click(body: dict[str, Any], respond: Respond) -> None:
        on_click(body, "approve")

    @replies_errors
    def handle_deny_click(body: dict[str, Any], respond: Respond) -> None:
        on_click(body, "deny")

    @replies_errors
    def handle_retry_click(body: dict[str, Any], respond: Respond) -> None:
        on_click(body, "retry")

    def on_review(body: dict[str, Any], keep: bool) -> None:
        incident_id = _clicked_incident(body)
        click = _click(body)
        with incident_context(incident_id):
            follow = deps.cordon.review_auto(incident_id, click, keep)
            deps.timeline.post(deps.cordon.get(incident_id),
                               render_auto_reviewed(follow, click.user))
            post_card(deps, follow, deps.client)

    @replies_errors
    def handle_keep_click(body: dict[str, Any], respond: Respond) -> None:
        on_review(body, keep=True)

    @replies_errors
    def handle_release_click(body: dict[str, Any], respond: Respond) -> None:
        on_review(body, keep=False)

    app.action(ActionId.KEEP.value)(ack=ack_now, lazy=[handle_keep_click])
    app.action(ActionId.RELEASE.value)(ack=ack_now, lazy=[handle_release_click])
    app.action(ActionId.APPROVE.value)(ack=ack_now, lazy=[handle_approve_click])
    app.action(ActionId.DENY.value)(ack=ack_now, lazy=[handle_deny_click])
    app.action(ActionId.RETRY.value)(ack=ack_now, lazy=[handle_retry_click])
