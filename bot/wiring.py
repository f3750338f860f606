"""The composition root: settings in, a running Cordon out. Nothing is created at
import time; tests, the sandbox and `serve` all build through here."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from slack_bolt import App, BoltContext
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler

from bot import blocks
from bot.approvers import ApproverPolicy
from bot.deps import Deps
from bot.flows import post_card
from bot.listeners import actions, commands, forms, home
from bot.metrics import CountingWebClient, Metrics
from bot.notifier import SlackTimeline
from bot.settings import Settings
from playbooks.auto import parse_rules
from playbooks.lifecycle import Observers
from playbooks.models import Incident
from playbooks.operations import client_pool, parse_ec2_buckets, warm_clients
from playbooks.runner import Runner, Worker
from playbooks.service import Cordon
from playbooks.store import Store
from playbooks.watch import Watcher

log = logging.getLogger("cordon")


def make_web_client(settings: Settings, metrics: Metrics | None = None) -> WebClient:
    """Slack's Web API. A 429 waits for Slack's Retry-After (slack_sdk's handler); a 5xx
    or a lost connection is not retried blindly here — the outbox retries it, after
    checking whether the message had landed. With `metrics`, every send is counted."""
    kwargs: dict[str, Any] = {"token": settings.slack_bot_token,
                              "retry_handlers": [RateLimitErrorRetryHandler(max_retry_count=2)]}
    if settings.slack_api_url:
        kwargs["base_url"] = settings.slack_api_url.rstrip("/") + "/"
    if metrics is not None:
        return CountingWebClient(on_call=metrics.slack_sent, **kwargs)
    return WebClient(**kwargs)


def build_deps(settings: Settings, session_factory: Callable[[], Any] | None = None,
               warm: bool = True) -> Deps:
    """Everything `serve` runs on. `warm`: create the AWS clients ahead of the first
    incident, in the background (as `serve` does; a test that does not time the cut can
    leave them to be made when first used)."""
    store = Store.from_url(settings.database_url)
    metrics = Metrics(store)

    def count_throttle(action: str) -> None:
        metrics.throttles.labels(action=action).inc()

    pool = client_pool(session_factory, settings.accounts,
                       parse_ec2_buckets(settings.ec2_buckets) if settings.ec2_pacing else None,
                       on_throttle=count_throttle)
    warmed = threading.Event()

    def warm_up() -> None:
        try:
            warm_clients(pool, settings.regions)
        except Exception:
            log.exception("could not create AWS clients ahead of time")
        warmed.set()

    if warm:
        threading.Thread(target=warm_up, name="cordon-warm", daemon=True).start()
    else:
        warmed.set()
    client = make_web_client(settings, metrics)
    timeline = SlackTimeline(store, client)
    watcher = Watcher(store, pool.for_region, settings.regions, settings.watch_minutes,
                      blocks.WatchVoice(), settings.watch_interval, wake=timeline.wake,
                      on_events=lambda incident, n: metrics.watch_events.labels(
                          playbook=incident.playbook).inc(n))
    observers = Observers([metrics, watcher])
    runner = Runner(store, pool.for_region, timeline, lease_seconds=settings.lease_seconds,
                    run_options={"asg_decrement": settings.asg_decrement,
                                 "key_lookback_days": settings.key_lookback_days,
                                 "regions": list(settings.regions)},
                    after_cut=max(2, settings.workers // 4), observer=observers)
    worker = Worker(runner, max_workers=settings.workers)
    approvers = ApproverPolicy(settings.approvers, client, settings.usergroup_cache_ttl)
    cordon = Cordon(store, pool.for_region, settings.regions, settings.approval_ttl, worker,
                    wide_approvals=settings.wide_approvals, accounts=settings.accounts,
                    is_approver=approvers.is_approver, break_glass=settings.break_glass_arns,
                    observer=observers, auto_rules=parse_rules(settings.auto_contain))
    deps = Deps(cordon=cordon, approvers=approvers, timeline=timeline, client=client,
                store=store, worker=worker, key_lookback_days=settings.key_lookback_days,
                auto_remind_seconds=settings.auto_remind if settings.auto_contain else 0,
                warmed=warmed, metrics=metrics, watcher=watcher)

    def post_queued_card(incident: Incident, team_id: str) -> None:
        post_card(deps, incident, client, team_id, queue_if_down=False)

    timeline.post_card = post_queued_card
    return deps


def _authorize(settings: Settings, client: WebClient) -> Callable[..., AuthorizeResult]:
    """Never a network call on the path to the ack: the bot's own ids are looked up in the
    background (auth.test, again every 30 s until Slack answers)."""
    known: dict[str, str] = {}

    def look_up() -> None:
        while True:
            try:
                found = client.auth_test()
                known.update(user_id=str(found.get("user_id") or ""),
                             bot_id=str(found.get("bot_id") or ""))
                return
            except Exception as exc:
                log.warning("auth.test failed; trying again in 30 s",
                            extra={"error": str(exc)[:200]})
                time.sleep(30)

    threading.Thread(target=look_up, name="cordon-auth-test", daemon=True).start()

    def authorize(enterprise_id: str | None, team_id: str | None, **_: Any
                  ) -> AuthorizeResult:
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id,
                               bot_token=settings.slack_bot_token,
                               bot_user_id=known.get("user_id") or None,
                               bot_id=known.get("bot_id") or None)

    return authorize


def build_app(settings: Settings, deps: Deps) -> App:
    app = App(
        name="cordon",  # named: Bolt would otherwise walk the call stack for a name
        client=deps.client,
        signing_secret=settings.slack_signing_secret,
        process_before_response=False,
        listener_executor=deps.listeners,
        # Cordon starts (and resumes interrupted runs) while Slack is unreachable;
        # `preflight` is where the token is checked.
        token_verification_enabled=False,
        # Every request is acked while Slack's Web API is down (Bolt's own single-team
        # authorization would call auth.test first and answer 500): the token is this
        # app's; the bot's user id comes from auth.test once Slack answers.
        authorize=_authorize(settings, deps.client),
    )
    @app.middleware
    def one_client(context: BoltContext, next: Callable[[], None]) -> None:
        # Bolt makes a new WebClient for each request; Cordon serves one workspace with one
        # bot token, so every listener gets the app's own client, whose sends are counted
        # (GET /metrics). Nobody changes its token.
        context["client"] = deps.client
        next()

    commands.register(app, deps)
    actions.register(app, deps)
    forms.register(app, deps)
    home.register(app, deps)

    @app.error
    def on_error(error: Exception, body: dict[str, Any]) -> None:
        log.error("unhandled listener error", exc_info=error,
                  extra={"type": body.get("type") or body.get("command")})

    return app
