"""App Home: what is pending, running and finished, and an export button per incident."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, App
from slack_sdk import WebClient

from bot.blocks import render_error
from bot.flows import post_export, publish_home
from bot.ids import ActionId
from playbooks.errors import CordonError

if TYPE_CHECKING:
    from bot.deps import Deps


def register(app: App, deps: Deps) -> None:
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
            note = render_error(exc)
        publish_home(deps, client, body["user"]["id"], note)

    app.action(ActionId.EXPORT.value)(ack=ack_now, lazy=[on_export_click])
