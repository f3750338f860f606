"""Approve and Deny clicks, authorised on the server for every click."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App, Respond

from bot.blocks import render_retry
from bot.ids import ActionId
from bot.listeners import replies_errors
from playbooks.errors import BadInput, NotAuthorized
from playbooks.logctx import incident_context
from playbooks.store import THREAD

if TYPE_CHECKING:
    from bot.wiring import Deps

log = logging.getLogger("cordon.actions")


def _clicked_incident(body: dict[str, Any]) -> str:
    try:
        value = json.loads(body["actions"][0]["value"])
        return str(value["incident_id"])
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise BadInput("this button carries no incident; nothing was changed") from exc


def register(app: App, deps: Deps) -> None:
    def ack_now(ack: Ack) -> None:
        ack()

    def decide(body: dict[str, Any], respond: Respond, approve: bool) -> None:
        user = body["user"]["id"]
        incident_id = _clicked_incident(body)
        with incident_context(incident_id):
            incident = deps.cordon.get(incident_id)
            verb = "approve" if approve else "deny"
            if approve and user == incident.requester:
                deps.cordon.refuse(incident_id, user, verb, "refused: own request")
                raise NotAuthorized("you asked for this containment, so someone else must "
                                    "approve it. Nothing was changed.")
            # The requester may withdraw their own request; everyone else must be an approver.
            if not (not approve and user == incident.requester) and \
                    not deps.approvers.is_approver(user):
                deps.cordon.refuse(incident_id, user, verb, "refused: not an approver")
                log.info("click refused", extra={"user": user, "action": verb})
                raise NotAuthorized(f"you are not authorised to {verb} containments. "
                                    "Nothing was changed.")
            # The card's new state is written with the decision itself; send it now.
            deps.cordon.decide(incident_id, user, approve)
            deps.timeline.wake(incident_id)

    @replies_errors
    def handle_approve_click(body: dict[str, Any], respond: Respond) -> None:
        decide(body, respond, approve=True)

    @replies_errors
    def handle_deny_click(body: dict[str, Any], respond: Respond) -> None:
        decide(body, respond, approve=False)

    @replies_errors
    def handle_retry_click(body: dict[str, Any], respond: Respond) -> None:
        user = body["user"]["id"]
        incident_id = _clicked_incident(body)
        with incident_context(incident_id):
            if not deps.approvers.is_approver(user):
                deps.cordon.refuse(incident_id, user, "retry", "refused: not an approver")
                raise NotAuthorized("you are not authorised to retry containments. "
                                    "Nothing was changed.")
            said = render_retry(deps.cordon.get(incident_id), user)
            deps.cordon.retry(incident_id, user, messages=[(THREAD, {"text": said})])
            deps.timeline.wake(incident_id)

    app.action(ActionId.APPROVE.value)(ack=ack_now, lazy=[handle_approve_click])
    app.action(ActionId.DENY.value)(ack=ack_now, lazy=[handle_deny_click])
    app.action(ActionId.RETRY.value)(ack=ack_now, lazy=[handle_retry_click])
