"""What the Slack side is built from: one object handed to every listener, the
scheduler and the sandbox (its own module, so that nothing imports the wiring back)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from slack_sdk import WebClient

from bot.approvers import ApproverPolicy
from bot.metrics import Metrics
from bot.notifier import SlackTimeline
from playbooks.runner import Worker
from playbooks.service import Cordon
from playbooks.store import Store
from playbooks.watch import Watcher


@dataclass
class Deps:
    cordon: Cordon
    approvers: ApproverPolicy
    timeline: SlackTimeline
    client: WebClient
    store: Store
    worker: Worker
    key_lookback_days: int = 7
    # An automatic containment nobody reviewed is reminded after this (0: never).
    auto_remind_seconds: int = 0
    warmed: threading.Event = field(default_factory=threading.Event)
    metrics: Metrics | None = None
    watcher: Watcher | None = None  # CloudTrail after a cut (its sweep is scheduled)
    # Where Bolt runs the lazy listeners (the slow half of every request): a stop lets the
    # ones under way finish, so no answer is cut off half-sent.
    listeners: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8,
                                                   thread_name_prefix="cordon-listener"))
