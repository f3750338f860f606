"""Sends what Slack would send — slash commands and button clicks — to the bot's
HTTP endpoint, signed with the signing secret exactly as Slack signs them."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from bot.sandbox.fake_slack import FakeSlack


class SignedSlack:
    def __init__(self, endpoint: str, signing_secret: str, fake: FakeSlack,
                 team_id: str = "T0SANDBOX") -> None:
        self.endpoint = endpoint
        self.verifier = SignatureVerifier(signing_secret)
        self.fake = fake
        self.team_id = team_id

    def post(self, body: str, timestamp: int | None = None,
             signature: str | None = None) -> tuple[int, str]:
        ts = str(timestamp if timestamp is not None else int(time.time()))
        sig = signature or self.verifier.generate_signature(timestamp=ts, body=body)
        req = urllib.request.Request(self.endpoint, data=body.encode(), method="POST", headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sig or "",
        })
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

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
