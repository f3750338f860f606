"""Sends what Slack would send — slash commands, button clicks, modal submissions,
message shortcuts and Events API events — to the bot's HTTP endpoint, signed with the
signing secret exactly as Slack signs them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from sandbox.fake_slack import FakeSlack
from sandbox.slack_rules import message_problems


class SignedSlack:
    def __init__(self, endpoint: str, signing_secret: str, fake: FakeSlack,
                 team_id: str = "T0SANDBOX") -> None:
        self.endpoint = endpoint
        self.verifier = SignatureVerifier(signing_secret)
        self.fake = fake
        self.team_id = team_id

    def post(self, body: str, timestamp: int | None = None,
             signature: str | None = None,
             content_type: str = "application/x-www-form-urlencoded") -> tuple[int, str]:
        ts = str(timestamp if timestamp is not None else int(time.time()))
        sig = signature or self.verifier.generate_signature(timestamp=ts, body=body)
        req = urllib.request.Request(self.endpoint, data=body.encode(), method="POST", headers={
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sig or "",
        })
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                status, answer = resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        self._check_ack(answer)
        return status, answer

    def _check_ack(self, answer: str) -> None:
        """An ack's body is a message (or a view) Slack shows too: the same rules."""
        try:
            payload = json.loads(answer) if answer.startswith("{") else None
        except ValueError:
            payload = None
        if isinstance(payload, dict):
            with self.fake.lock:
                self.fake.violations += message_problems("ack", payload)

    def command_body(self, user: str, channel: str, text: str) -> str:
        return urlencode({
            "token": "legacy-unused", "team_id": self.team_id, "team_domain": "sandbox",
            "channel_id": channel, "channel_name": "incident", "user_id": user,
            "user_name": user.lower(), "command": "/contain", "text": text,
            "api_app_id": "A0CORDON", "response_url": self.fake.new_response_url(user),
            "trigger_id": f"{time.time():.6f}.trigger",
        })

    def command(self, user: str, channel: str, text: str) -> tuple[int, str]:
        return self.post(self.command_body(user, channel, text))

    def click_body(self, user: str, channel: str, message_ts: str, action_id: str,
                   value: str) -> str:
        payload: dict[str, Any] = {
            "type": "block_actions",
            "team": {"id": self.team_id, "domain": "sandbox"},
            "user": {"id": user, "username": user.lower(), "team_id": self.team_id},
            "api_app_id": "A0CORDON",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel,
                          "is_ephemeral": False},
            "channel": {"id": channel, "name": "incident"},
            "message": {"ts": message_ts, "type": "message"},
            "trigger_id": f"{time.time():.6f}.trigger",
            "response_url": self.fake.new_response_url(user),
            "actions": [{"action_id": action_id, "block_id": "decision", "value": value,
                         "type": "button", "action_ts": f"{time.time():.6f}"}],
        }
        return urlencode({"payload": json.dumps(payload)})

    def click(self, user: str, channel: str, message_ts: str, action_id: str,
              value: str) -> tuple[int, str]:
        return self.post(self.click_body(user, channel, message_ts, action_id, value))

    def click_button(self, user: str, channel: str, message_ts: str, label: str
                     ) -> tuple[int, str]:
        """Press the card's button with this label, as the card shows it now."""
        msg = self.fake.message(channel, message_ts)
        assert msg is not None, "no such message"
        for block in msg.blocks:
            for el in block.get("elements", []):
                if el.get("type") == "button" and el["text"]["text"] == label:
                    return self.click(user, channel, message_ts, el["action_id"], el["value"])
        raise LookupError(f"the message has no {label!r} button")

    def _interaction(self, payload: dict[str, Any]) -> tuple[int, str]:
        return self.post(urlencode({"payload": json.dumps(payload)}))

    def _user(self, user: str) -> dict[str, Any]:
        return {"id": user, "username": user.lower(), "team_id": self.team_id}

    def submit_view(self, user: str, view_id: str, values: dict[str, str]) -> tuple[int, str]:
        """Submit the open modal `view_id` with these values by block id (text inputs, or
        the value of a static select's option)."""
        opened = self.fake.views[view_id]["view"]
        state: dict[str, Any] = {}
        for block in opened.get("blocks", []):
            if block.get("type") != "input":
                continue
            element = block["element"]
            value = values.get(block["block_id"])
            if element["type"] == "static_select":
                option = next((o for o in element["options"] if o["value"] == value), None)
                item: dict[str, Any] = {"type": "static_select", "selected_option": option}
            else:
                item = {"type": element["type"], "value": value}
            state[block["block_id"]] = {element["action_id"]: item}
        payload = {
            "type": "view_submission", "team": {"id": self.team_id, "domain": "sandbox"},
            "user": self._user(user), "api_app_id": "A0CORDON",
            "trigger_id": f"{time.time():.6f}.trigger",
            "view": {**opened, "id": view_id, "team_id": self.team_id,
                     "state": {"values": state}},
        }
        status, body = self._interaction(payload)
        answer = json.loads(body) if body.strip().startswith("{") else {}
        if answer.get("response_action") == "update":
            self.fake.submitted(view_id, answer["view"])
        return status, body

    def message_shortcut(self, user: str, channel: str, message: dict[str, Any],
                         callback_id: str = "cordon_contain_message") -> tuple[int, str]:
        return self._interaction({
            "type": "message_action", "callback_id": callback_id,
            "team": {"id": self.team_id, "domain": "sandbox"}, "user": self._user(user),
            "channel": {"id": channel, "name": "incident"}, "message": message,
            "message_ts": message.get("ts", ""), "api_app_id": "A0CORDON",
            "trigger_id": f"{time.time():.6f}.trigger",
            "response_url": self.fake.new_response_url(user)})

    def event(self, event: dict[str, Any]) -> tuple[int, str]:
        """An Events API event, as Slack posts it (JSON)."""
        body = json.dumps({
            "token": "legacy-unused", "team_id": self.team_id, "api_app_id": "A0CORDON",
            "event": event, "type": "event_callback",
            "event_id": f"Ev{time.time_ns()}", "event_time": int(time.time())})
        return self.post(body, content_type="application/json")
