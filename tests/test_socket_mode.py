"""Socket Mode as documented: with SLACK_APP_TOKEN, `python -m bot serve` opens
Slack's WebSocket (here a local server speaking the Socket Mode envelope), acks each
envelope, and runs an incident from a slash command and a button click."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.server import ServerConnection, serve

from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import wait_for
from tests.test_cli import free_port, health

ROOT = Path(__file__).resolve().parent.parent


class SocketModeSlack:
    """Slack's side of a Socket Mode connection: hello, then envelopes, collecting acks."""

    def __init__(self) -> None:
        self.outgoing: queue.Queue[dict[str, Any]] = queue.Queue()
        self.acks: dict[str, dict[str, Any]] = {}
        self.connected = threading.Event()
        self.server = serve(self._handle, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.socket.getsockname()[1]}/link"

    def _handle(self, ws: ServerConnection) -> None:
        ws.send(json.dumps({"type": "hello", "num_connections": 1,
                            "connection_info": {"app_id": "A0CORDON"}}))
        self.connected.set()
        while True:
            try:
                raw = ws.recv(timeout=0.05)
                message = json.loads(raw)
                if "envelope_id" in message:
                    self.acks[message["envelope_id"]] = message
            except TimeoutError:
                pass
            except Exception:
                return
            while not self.outgoing.empty():
                ws.send(json.dumps(self.outgoing.get()))

    def send(self, kind: str, payload: dict[str, Any]) -> str:
        envelope_id = str(uuid.uuid4())
        self.outgoing.put({"envelope_id": envelope_id, "type": kind, "payload": payload,
                           "accepts_response_payload": kind == "slash_commands",
                           "retry_attempt": 0, "retry_reason": ""})
        return envelope_id


@pytest.fixture
def socket_slack() -> Iterator[SocketModeSlack]:
    slack = SocketModeSlack()
    slack.thread.start()
    yield slack
    slack.server.shutdown()


def test_serve_in_socket_mode_runs_an_incident(
        tmp_path: Path, local_aws: sandbox_world.LocalAws, world: sandbox_world.World,
        fake_slack: FakeSlack, socket_slack: SocketModeSlack) -> None:
    fake_slack.socket_url = socket_slack.url
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CORDON_"))}
    env.update(sandbox_world.SANDBOX_ENV, AWS_ENDPOINT_URL=local_aws.url, PYTHONPATH=str(ROOT),
               SLACK_BOT_TOKEN="xoxb-test", SLACK_SIGNING_SECRET="unused-in-socket-mode",
               SLACK_APP_TOKEN="xapp-test", SLACK_API_URL=fake_slack.api_url,
               CORDON_APPROVERS="S0ONCALL", PORT=str(port),
               CORDON_DATABASE_URL=f"sqlite:///{tmp_path}/cordon.db")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert socket_slack.connected.wait(30), "the bot never opened the WebSocket"
        wait_for(lambda: health(port) == 200, timeout=30)  # /healthz in Socket Mode too
        command = {"team_id": "T0SANDBOX", "channel_id": "C1", "user_id": "U0DANA",
                   "command": "/contain", "text": f"{world.instance_id} isolate miner",
                   "response_url": fake_slack.new_response_url("U0DANA"),
                   "trigger_id": "1.2", "api_app_id": "A0CORDON"}
        envelope = socket_slack.send("slash_commands", command)
        ack = wait_for(lambda: socket_slack.acks.get(envelope), timeout=10)
        assert "Looking up" in json.dumps(ack.get("payload", {}))
        card = wait_for(lambda: fake_slack.channel_messages("C1"), timeout=30)[0]
        approve = next(e for b in card.blocks if b["type"] == "actions"
                       for e in b["elements"] if e["text"]["text"] == "Approve")
        click = {"type": "block_actions", "team": {"id": "T0SANDBOX"},
                 "user": {"id": "U0LEE"}, "api_app_id": "A0CORDON",
                 "channel": {"id": "C1"}, "container": {"type": "message",
                                                        "message_ts": card.ts},
                 "message": {"ts": card.ts}, "trigger_id": "1.3",
                 "response_url": fake_slack.new_response_url("U0LEE"),
                 "actions": [{"action_id": approve["action_id"], "block_id": "decision",
                              "value": approve["value"], "type": "button",
                              "action_ts": "1"}]}
        clicked = socket_slack.send("interactive", click)
        wait_for(lambda: socket_slack.acks.get(clicked), timeout=10)
        wait_for(lambda: any(m.text.startswith("🔒 *Contained*")
                             for m in fake_slack.thread("C1", card.ts)), timeout=60)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
