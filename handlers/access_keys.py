"""A leaked access key. `aws:TokenIssueTime` exists only for temporary credentials, so
a deny policy alone leaves a long-term key working: the key itself is deactivated
(never deleted — its id is evidence), and the deny kills the sessions minted from it."""

from __future__ import annotations

import re
from abc import abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from handlers import cloudtrail, revocation
from handlers.arns import iam_arn
from handlers.aws import Clients
from handlers.base import (
    Action,
    Observation,
    Outcome,
    StepContext,
    StepFailed,
    VerificationFailed,
)
from handlers.fanout import parallel
from handlers.retry import describe_error

KEY_ID = re.compile(r"^(AKIA|ASIA)[A-Z0-9]{16}$")
# What finding a key's owner and drawing its card calls.
LOOKUP_PERMISSIONS = (
    "sts:GetCallerIdentity", "sts:GetAccessKeyInfo", "iam:GetAccessKeyLastUsed",
    "iam:ListAccessKeys", "iam:GetLoginProfile", "iam:ListAttachedUserPolicies",
    "iam:ListUserPolicies", "cloudtrail:LookupEvents",
)
USER_POLICY = "cordon-revoke-sessions"
ROLE_POLICY = "AWSRevokeOlderSessions"
# Calls that suggest persistence or privilege escalation, shown first.
SUSPICIOUS = (
    "CreateAccessKey", "CreateUser", "CreateLoginProfile", "UpdateLoginProfile",
    "AttachUserPolicy", "AttachRolePolicy", "AttachGroupPolicy", "PutUserPolicy",
    "PutRolePolicy", "PutGroupPolicy", "CreateRole", "UpdateAssumeRolePolicy", "AssumeRole",
    "RunInstances", "ConsoleLogin", "CreatePolicyVersion", "SetDefaultPolicyVersion",
    "AddUserToGroup", "GetFederationToken", "GetSessionToken", "CreateVirtualMFADevice",
    "DeactivateMFADevice", "StopLogging", "DeleteTrail", "PutBucketPolicy",
)


class KeyNotFound(Exception):
    pass


def no_such_entity(exc: ClientError) -> bool:
    return describe_error(exc).code in ("NoSuchEntity", "NoSuchEntityException")


def has_console(iam: Any, user: str) -> bool:
    """Whether the user has a console password (a login profile)."""
    try:
        iam.get_login_profile(UserName=user)
        return True
    except ClientError as exc:
        if no_such_entity(exc):
            return False
        raise


def describe_key(clients: Clients, key_id: str, account: str) -> dict[str, Any]:
    """Who owns the key and what that user can do: everything the card shows.
    `clients` act in the key's account."""
    iam = clients.client("iam")
    facts: dict[str, Any] = {"key_id": key_id, "account": account,
                             "temporary": key_id.startswith("ASIA")}
    if facts["temporary"]:
        return facts
    try:
        used = iam.get_access_key_last_used(AccessKeyId=key_id)
    except ClientError as exc:
        if no_such_entity(exc):
            raise KeyNotFound(f"no access key {key_id} in account {account}") from exc
        raise
    user = used["UserName"]
    last = used.get("AccessKeyLastUsed") or {}

    def keys() -> list[dict[str, Any]]:
        return list(iam.list_access_keys(UserName=user)["AccessKeyMetadata"])

    def attached() -> list[str]:
        return [p["PolicyName"] for p in
                iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]]

    def inline() -> list[str]:
        return list(iam.list_user_policies(UserName=user)["PolicyNames"])

    all_keys, console, attached_names, inline_names = parallel(
        lambda f: f(), [keys, lambda: has_console(iam, user), attached, inline])
    now = datetime.now(UTC)
    this: dict[str, Any] = next((k for k in all_keys if k["AccessKeyId"] == key_id), {})
    created = this.get("CreateDate")
    facts.update({
        "user": user,
        "status": this.get("Status", "?"),
        "created": created.isoformat() if isinstance(created, datetime) else str(created or ""),
        "age_days": (now - created).days if isinstance(created, datetime) else None,
        "last_used": {
            "when": (last["LastUsedDate"].isoformat()
                     if isinstance(last.get("LastUsedDate"), datetime) else None),
            "service": last.get("ServiceName"), "region": last.get("Region")},
        "other_keys": [{"id": k["AccessKeyId"], "status": k["Status"]}
                       for k in all_keys if k["AccessKeyId"] != key_id],
        "console": console,
        "attached_policies": attached_names,
        "inline_policies": inline_names,
    })
    return facts


def deny_older_sessions(issued_before: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Deny", "Action": "*", "Resource": "*",
        "Condition": {"DateLessThan": {"aws:TokenIssueTime": issued_before}}}]}


def _cutoff(document: dict[str, Any] | None) -> str:
    """The latest aws:TokenIssueTime cut-off in a deny-older-sessions document ("" if none);
    the stamps are ISO 8601 in UTC, so they compare as strings."""
    found = [str(st.get("Condition", {}).get("DateLessThan", {}).get("aws:TokenIssueTime", ""))
             for st in revocation.statements(document)]
    return max(found, default="")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeactivateAccessKey(Action):
    name = "deactivate-access-key"
    description = "deactivate the key (never deleted: its id is evidence)"
    permissions = ("iam:ListAccessKeys", "iam:UpdateAccessKey")

    def _status(self, ctx: StepContext) -> str:
        user = ctx.target.facts["user"]
        keys = ctx.clients.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
        found = next((k for k in keys if k["AccessKeyId"] == ctx.target.resource_id), None)
        if found is None:
            raise StepFailed("NoSuchEntity", f"{ctx.target.resource_id} no longer exists")
        return str(found["Status"])

    def check(self, ctx: StepContext) -> bool:
        ctx.memo["status"] = self._status(ctx)
        return bool(ctx.memo["status"] == "Inactive")

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return {"user": ctx.target.facts["user"], "status": ctx.memo.get("status")}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ctx.clients.client("iam").update_access_key(
            UserName=captured["user"], AccessKeyId=ctx.target.resource_id, Status="Inactive")
        return Outcome(f"{ctx.target.resource_id} of {captured['user']}: Active → Inactive "
                       "(kept, not deleted: the key id is evidence)")

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        if self._status(ctx) != "Inactive":
            raise VerificationFailed("the key is still active")
        return "Inactive"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return f"reactivate the key of {captured.get('user')}"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ctx.clients.client("iam").update_access_key(
            UserName=captured["user"], AccessKeyId=ctx.target.resource_id,
            Status=captured.get("status") or "Active")
        return Outcome(f"{ctx.target.resource_id} reactivated. A rotated key is the better "
                       "ending: create a new key, move the workload to it, delete this one")


class _DenyOlderSessions(Action):
    """An inline deny-all for sessions issued before now, on a user or a role."""

    kind = "user"  # or "role": the IAM calls are the same but for the word
    policy_name = USER_POLICY

    def _principal(self, ctx: StepContext) -> str:
        return str(ctx.target.facts[self.kind])

    def _get(self, ctx: StepContext, principal: str) -> dict[str, Any] | None:
        return revocation.read_policy(ctx.clients, self.kind, principal, self.policy_name)

    def check(self, ctx: StepContext) -> bool:
        return False  # a newer cut-off is always at least as strict

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        principal = self._principal(ctx)
        return {"principal": principal, "prior_policy": self._get(ctx, principal)}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        now = _now()
        principal = captured["principal"]
        limit = revocation.INLINE_LIMIT[self.kind]

        def build(current: dict[str, Any] | None, others: int) -> dict[str, Any]:
            # A later cut-off written meanwhile by another incident is stricter: kept.
            document = (current if current is not None and _cutoff(current) > now
                        else deny_older_sessions(now))
            if revocation.policy_size(document) + others > limit:
                raise StepFailed("LimitExceeded", f"{self.policy_name} does not fit beside "
                                 f"the {others} characters of inline policy on {principal} "
                                 f"(IAM's limit: {limit}); free space and retry")
            return document

        document = revocation.write_policy(
            ctx.clients, ctx.lock, self.kind, principal,
            iam_arn(ctx.target.region, str(ctx.target.facts.get("account", "")), self.kind,
                    principal),
            self.policy_name, build, lambda seen: _cutoff(seen) >= now)
        now = _cutoff(document)
        until = revocation.stamp(revocation.until_of(
            self.kind, datetime.strptime(now, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)))
        record = {"kind": self.kind, "principal": principal,
                  "policy": self.policy_name, "sid": None, "cutoff": now, "until": until}
        return Outcome(self._said(principal, now)
                       + f". It stays until {until}, when every session it could hit has "
                       "expired — a release does not remove it",
                       {"policy": document, "revocations": [record]})

    @abstractmethod
    def _said(self, principal: str, now: str) -> str:
        """What the thread says the policy does."""

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        if _cutoff(self._get(ctx, captured["principal"])) < _cutoff(outcome.details["policy"]):
            raise VerificationFailed(f"{self.policy_name} is not in place")
        return f"{self.policy_name} in place"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return (f"nothing: {self.policy_name} on {captured.get('principal')} stays until every "
                "session it could hit has expired")

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        """The revocation stays: removing it would bring back to life the sessions an
        attacker may hold. The sweep removes it once they have all expired."""
        current = self._get(ctx, captured["principal"])
        cutoffs = sorted({st.get("Condition", {}).get("DateLessThan", {})
                          .get("aws:TokenIssueTime", "")
                          for st in (current or {}).get("Statement", [])} - {""})
        if not cutoffs:
            return Outcome(f"{self.policy_name} is no longer on {captured['principal']}")
        cutoff = datetime.strptime(cutoffs[-1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        until = revocation.stamp(revocation.until_of(self.kind, cutoff))
        return Outcome(f"{self.policy_name} kept on {captured['principal']} until {until}, "
                       "when every session issued before the containment has expired")


class RevokeSessions(_DenyOlderSessions):
    name = "revoke-sessions"
    description = ("deny everything to the user's sessions issued before now (those minted "
                   "from the key with GetSessionToken or GetFederationToken)")
    permissions = ("iam:GetUserPolicy", "iam:PutUserPolicy", "iam:ListUserPolicies")

    def _said(self, principal: str, now: str) -> str:
        return (f"inline policy {USER_POLICY} on {principal}: deny * to sessions issued "
                f"before {now}")


class RevokeRoleSessions(_DenyOlderSessions):
    name = "revoke-role-sessions"
    description = ("deny everything to every session of the role issued before now — ALL "
                   "of them, legitimate ones too (AWSRevokeOlderSessions)")
    permissions = ("iam:GetRolePolicy", "iam:PutRolePolicy", "iam:ListRolePolicies")
    kind = "role"
    policy_name = ROLE_POLICY

    def _said(self, principal: str, now: str) -> str:
        return (f"{ROLE_POLICY} on role {principal}: every session of the role issued before "
                f"{now} is denied — legitimate ones too; they must assume the role again")


class DisableConsole(Action):
    name = "disable-console"
    description = "delete the user's console password (only with console=off)"
    permissions = ("iam:GetLoginProfile", "iam:DeleteLoginProfile")

    def skip_reason(self, ctx: StepContext) -> str | None:
        if ctx.options.get("console") != "off":
            return "not asked (add console=off to disable console access)"
        return None

    def _exists(self, ctx: StepContext) -> bool:
        return has_console(ctx.clients.client("iam"), ctx.target.facts["user"])

    def check(self, ctx: StepContext) -> bool:
        return not self._exists(ctx)

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return {"user": ctx.target.facts["user"], "had_console": True}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ctx.clients.client("iam").delete_login_profile(UserName=captured["user"])
        return Outcome(f"console password of {captured['user']} deleted")

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        if self._exists(ctx):
            raise VerificationFailed("the login profile still exists")
        return "no login profile"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return f"remind you to re-create {captured.get('user')}'s console password"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        return Outcome(f"{captured['user']}'s console password was deleted and cannot be "
                       "restored: re-create it (iam create-login-profile) with a new password")


def rank_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CloudTrail events, the ones suggesting persistence or escalation first, newest
    first within each group."""
    rows = []
    for e in events:
        when = e.get("EventTime")
        read = cloudtrail.read_event(e, "?")
        rows.append({
            "name": read.name,
            "time": when.isoformat() if isinstance(when, datetime) else str(when or ""),
            "source_ip": read.source_ip,
            "region": read.region,
            "suspicious": read.name in SUSPICIOUS,
            "role": read.role,
        })
    return sorted(rows, key=lambda r: (not r["suspicious"], _neg_time(r["time"])))


def _neg_time(text: str) -> str:
    # Newest first: invert the ISO string so that sorted() ascends the other way.
    return "".join(chr(255 - ord(c)) for c in text)


def summarise_events(rows: list[dict[str, Any]], limit: int = 15) -> str:
    if not rows:
        return "no CloudTrail events for this key in the look-back window"
    flagged = sum(r["suspicious"] for r in rows)
    lines = [f"{len(rows)} events, {flagged} suggesting persistence or escalation:"]
    for r in rows[:limit]:
        mark = "⚠️ " if r["suspicious"] else ""
        lines.append(f"{mark}{r['time']} {r['name']} from {r['source_ip']} in {r['region']}")
    if len(rows) > limit:
        lines.append(f"… and {len(rows) - limit} more")
    return "\n".join(lines)


@dataclass
class Lookup:
    events: list[dict[str, Any]] = field(default_factory=list)
    # Regions whose events are incomplete, and why (throttled, page limit, refused).
    partial: dict[str, str] = field(default_factory=dict)
    regions: list[str] = field(default_factory=list)




def lookup_events(clients: Clients, key_id: str, days: int,
                  regions: list[str] | None = None) -> Lookup:
    """The key's events in us-east-1 (IAM and the other global services) and every
    configured region, read side by side; partial results are kept and marked."""
    found = Lookup(regions=cloudtrail.lookup_regions(clients, regions))

    def one(region: str) -> tuple[str, list[dict[str, Any]], str | None]:
        try:
            events, why = cloudtrail.pages(clients, region, KEY_ATTRIBUTE, key_id, _since(days))
        except Exception as exc:
            return region, [], f"unavailable: {describe_error(exc).code}"
        return region, events, why

    seen: set[str] = set()
    for region, events, why in parallel(one, found.regions):
        for e in events:
            if e.get("EventId") not in seen:
                seen.add(str(e.get("EventId")))
                found.events.append(e)
        if why:
            found.partial[region] = why
    if len(found.partial) == len(found.regions) and not found.events:
        raise LookupUnavailable("; ".join(f"{r}: {w}" for r, w in found.partial.items()))
    return found


KEY_ATTRIBUTE = "AccessKeyId"


def _since(days: int) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


class LookupUnavailable(Exception):
    pass


class ReviewActivity(Observation):
    name = "review-activity"
    description = "what the key did (CloudTrail), persistence and escalation first"
    permissions = ("cloudtrail:LookupEvents",)

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        days = int(ctx.options.get("key_lookback_days", 7))
        try:
            found = lookup_events(ctx.clients, ctx.target.resource_id, days,
                                  list(ctx.options.get("regions") or []))
        except Exception as exc:
            err = describe_error(exc)
            return Outcome(f"activity review unavailable: {err.code} — look the key up in "
                           f"CloudTrail by hand (AccessKeyId = {ctx.target.resource_id})",
                           {"available": False})
        rows = rank_events(found.events)
        said = f"last {days} days in {', '.join(found.regions)}: " + summarise_events(rows)
        if found.partial:
            said += "\n⚠️ partial: " + "; ".join(f"{r} {w}" for r, w in found.partial.items())
        return Outcome(said, {"available": True, "events": len(rows),
                              "suspicious": sum(r["suspicious"] for r in rows),
                              "regions": found.regions, "partial": found.partial})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        return "reviewed" if outcome.details["available"] else "not available"


class ListOtherKeys(Observation):
    name = "list-other-keys"
    description = "the user's other active keys, flagged for rotation"
    permissions = ("iam:ListAccessKeys",)

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        user = ctx.target.facts["user"]
        keys = ctx.clients.client("iam").list_access_keys(UserName=user)["AccessKeyMetadata"]
        others = [k["AccessKeyId"] for k in keys
                  if k["AccessKeyId"] != ctx.target.resource_id and k["Status"] == "Active"]
        if not others:
            return Outcome(f"{user} has no other active key", {"others": []})
        return Outcome(f"⚠️ rotate these too — {user}'s other active keys: {', '.join(others)}",
                       {"others": others})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        return f"{len(outcome.details['others'])} other active keys"


def role_of_temporary_key(clients: Clients, key_id: str, days: int,
                          regions: list[str] | None = None) -> str | None:
    """The role a temporary key's session came from, from the first CloudTrail event
    that names it (each region stops reading at its first such event)."""
    def has_role(events: list[dict[str, Any]]) -> bool:
        return any(r.get("role") for r in rank_events(events))

    def one(region: str) -> str | None:
        try:
            events, _ = cloudtrail.pages(clients, region, KEY_ATTRIBUTE, key_id, _since(days),
                                         stop=has_role)
        except Exception:
            return None
        return next((str(r["role"]).rsplit("/", 1)[-1] for r in rank_events(events)
                     if r.get("role")), None)

    regions_read = cloudtrail.lookup_regions(clients, regions)
    return next((role for role in parallel(one, regions_read) if role), None)
