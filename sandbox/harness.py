"""Starts the parts the sandbox (and the end-to-end tests) drive: a fake Slack Web
API, the bot's real HTTP endpoint with signature verification, and the bot's
worker, all wired exactly as `serve` wires them."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bot.deps import Deps
from bot.intake import IntakeThread, build_intake
from bot.server import SlackHTTPServer
from bot.settings import Settings, load_settings
from bot.wiring import build_app, build_deps
from sandbox.fake_slack import FakeSlack
from sandbox.signed import SignedSlack
from sandbox.world import new_session


@dataclass
class RunningBot:
    settings: Settings
    deps: Deps
    server: SlackHTTPServer
    slack: SignedSlack
    intake: IntakeThread | None = None

    def stop(self) -> None:
        if self.intake is not None:
            self.intake.stop()
        self.server.stop()
        self.deps.listeners.shutdown(wait=True)
        self.deps.worker.shutdown(wait=True)
        self.deps.timeline.close()
        self.deps.store.engine.dispose()


# A signing secret of the shape Slack gives (32 letters and digits), for the tests'
# own servers; the bots started here each get a random one.
SECRET = "5ec7e7c0ffee5ec7e7c0ffee5ec7e7c0"


def start_bot(fake: FakeSlack, database_url: str, approvers: str = "S0ONCALL",
              regions: str = "us-east-1", session_factory: Callable[[], Any] | None = None,
              warm: bool = False, **overrides: Any) -> RunningBot:
    """The bot as `serve` runs it, in this process. `warm=True` creates the AWS clients
    ahead, as `serve` does (what a timing of the cut needs); otherwise they are made when
    first used, which spares most tests a tenth of their CPU."""
    secret = secrets.token_hex(16)
    settings = load_settings(
        SLACK_BOT_TOKEN="xoxb-sandbox",
        SLACK_SIGNING_SECRET=secret,
        SLACK_API_URL=fake.api_url,
        CORDON_APPROVERS=approvers,
        CORDON_DATABASE_URL=database_url,
        CORDON_REGIONS=regions,
        **overrides,
    )
    deps = build_deps(settings, session_factory or new_session, warm=warm)
    app = build_app(settings, deps)
    server = SlackHTTPServer(app, "127.0.0.1", 0, deps.store.health,
                             metrics=deps.metrics.wsgi() if deps.metrics else None)
    server.start()
    slack = SignedSlack(server.url + "/slack/events", secret, fake)
    intake = build_intake(settings, deps)
    # As `serve` runs it, but short-polling (paused between empty polls) so that a
    # test's bot stops at once.
    thread = IntakeThread(intake, wait_seconds=0).start() if intake is not None else None
    return RunningBot(settings, deps, server, slack, thread)


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0,
             every: float | None = None) -> Any:
    """Poll `predicate` until it is true. Without `every` the polls back off from 20 ms
    to a quarter of a second: a predicate that asks the database or moto costs CPU the
    run being waited for needs."""
    deadline = time.monotonic() + timeout
    pause = every if every is not None else 0.02
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(pause)
        if every is None:
            pause = min(pause * 1.5, 0.25)


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, as an orchestrator stops it; SIGKILL if it has not stopped in 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
