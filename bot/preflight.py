"""`python -m bot preflight`: one line per check, ✅ or ❌ with the fix; exit status 0
only when every check passes."""

from __future__ import annotations

from sqlalchemy import inspect

from bot.settings import load_settings
from bot.wiring import make_web_client
from playbooks.database import make_engine
from playbooks.models import Base
from playbooks.operations import client_pool, preflight_aws, preflight_queue, preflight_rules
from playbooks.store import Store
from playbooks.template import rules

REQUIRED_SCOPES = ("commands", "chat:write", "files:write", "usergroups:read",
                   "channels:history", "groups:history")


# Slack's answers that mean the token itself is wrong.
TOKEN_ERRORS = ("invalid_auth", "not_authed", "token_revoked", "token_expired",
                "account_inactive", "no_permission", "missing_scope")


def _slack_failure(exc: Exception, base_url: str) -> str:
    """Whose fault a failed auth.test is: the network (Slack never answered) or the token
    (Slack answered and refused it)."""
    response = getattr(exc, "response", None)
    error = response.get("error") if response is not None else None
    if error in TOKEN_ERRORS:
        return (f"Slack token: Slack refused it ({error}) — set SLACK_BOT_TOKEN to the app's "
                "Bot User OAuth Token (xoxb-…)")
    if error:
        return f"Slack: auth.test answered {error} — the token was not confirmed"
    reason = getattr(exc, "reason", None) or exc
    return (f"Slack: unreachable at {base_url} ({reason}) — check the network, proxy or "
            "SLACK_API_URL; the token was not checked")


def run_preflight() -> int:
    settings = load_settings()
    lines: list[tuple[bool, str]] = []

    client = make_web_client(settings)
    try:
        resp = client.auth_test()
        lines.append((True, f"Slack token: works for team {resp.get('team')} as "
                            f"@{resp.get('user')}"))
        granted = {s.strip() for s in (resp.headers.get("x-oauth-scopes") or "").split(",")
                   if s.strip()}
        missing = [s for s in REQUIRED_SCOPES if s not in granted]
        if not granted:
            lines.append((False, "Slack scopes: Slack did not report them — reinstall the app "
                                 "from slack-manifest.yml"))
        elif missing:
            lines.append((False, f"Slack scopes: missing {', '.join(missing)} — add them "
                                 "(slack-manifest.yml) and reinstall the app"))
        else:
            lines.append((True, f"Slack scopes: {', '.join(REQUIRED_SCOPES)}"))
    except Exception as exc:
        lines.append((False, _slack_failure(exc, client.base_url)))

    secret = settings.slack_signing_secret
    lines.append((len(secret) >= 16, "Signing secret: set" if len(secret) >= 16 else
                  "Signing secret: too short — copy it from the app's Basic Information"))

    try:
        engine = make_engine(settings.database_url)
        before = set(inspect(engine).get_table_names())
        engine.dispose()
        store = Store.from_url(settings.database_url)  # creates what is missing
        ok, why = store.health()
        store.engine.dispose()
        made = sorted(set(Base.metadata.tables) - before)
        said = f"created tables {', '.join(made)}" if made else "tables up to date"
        lines.append((ok, f"Database: reachable, {said}, {why}" if ok else
                      f"Database: reachable, {said}, but it {why}"))
    except Exception as exc:
        cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
        lines.append((False, f"Database: unreachable ({type(exc).__name__}: "
                             f"{cause[0][:160] if cause else ''}) — check CORDON_DATABASE_URL"))

    pool = client_pool(accounts=settings.accounts)
    for check in preflight_aws(pool, settings.regions):
        lines.append((check.ok, f"AWS {check.what}: {check.detail}"))
    if settings.findings_queue_url:
        ok, said, queue_arn = preflight_queue(pool, settings.findings_queue_url,
                                              settings.regions[0])
        lines.append((ok, f"Findings queue: {said}"))
        if queue_arn:
            expected = len(rules(tuple(settings.findings_products)))
            for check in preflight_rules(pool, queue_arn, settings.regions, expected):
                lines.append((check.ok, f"EventBridge {check.what}: {check.detail}"))

    for ok, text in lines:
        print(f"{'✅' if ok else '❌'} {text}")
    return 0 if all(ok for ok, _ in lines) else 1
