"""Revocations stay until every token they could hit has expired.

A revocation denies everything to credentials issued before a cut-off
(`aws:TokenIssueTime`). Removing it early would bring back to life whatever an
attacker copied, so a release never removes one; it is removed by the sweep once the
longest-lived token of its kind issued before the cut-off has expired:

- `instance`: the credentials an instance profile hands out. EC2 rotates them and does
  not document a maximum; they are seen to last about 6 hours. 12 hours — the longest
  any role session can last — is kept.
- `role`: sessions of a role (AWSRevokeOlderSessions): at most the role's maximum
  session duration, 12 hours at most.
- `user`: sessions minted from a user's key (GetSessionToken, GetFederationToken): at
  most 36 hours.

Instance revocations on one role share one inline policy, `cordon-revocations`, with a
statement per instance (its Sid names the instance and the end of its usefulness), so
that many incidents on one role fit in IAM's 10,240 characters of inline policy per
role; statements whose tokens have all expired are pruned whenever it is written.

Every read-merge-write of a principal's policy holds the principal's lock (the store's:
a database lock keyed by its ARN, so threads and replicas take turns), is described
again after the write, and fails the step when the statement is not there: the thread
never says "revoked" on the strength of a 200. IAM's size limit is the sum of all the
principal's inline policies (10,240 characters for a role, 2,048 for a user, whitespace
not counted), so the check reads them all.

moto stores these documents but evaluates no condition: the tests assert on the stored
documents, not on a denied call. In AWS an IAM change takes seconds to reach every
region (eventual consistency); the describe after the write reads IAM's own copy."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from handlers.aws import Clients
from handlers.base import StepFailed
from handlers.fanout import both, parallel
from handlers.retry import describe_error

LIFETIME = {"instance": timedelta(hours=12), "role": timedelta(hours=12),
            "user": timedelta(hours=36)}
ROLE_POLICY = "cordon-revocations"
# IAM's limit on all the inline policies of one role (or user), whitespace excluded.
ROLE_INLINE_LIMIT = 10240
INLINE_LIMIT = {"role": ROLE_INLINE_LIMIT, "user": 2048}
_SID = re.compile(r"^CordonRevoke(?P<instance>i[0-9a-f]+|Fleet[A-Z0-9]+)"
                  r"Until(?P<until>\d{12})$")
_TIME = "%Y-%m-%dT%H:%M:%SZ"

PERMISSIONS = ("iam:GetRolePolicy", "iam:PutRolePolicy", "iam:DeleteRolePolicy",
               "iam:GetUserPolicy", "iam:DeleteUserPolicy", "iam:ListRolePolicies",
               "iam:ListUserPolicies")
Lock = Callable[[str], AbstractContextManager[None]]


class PolicyTooLarge(Exception):
    pass


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime(_TIME)


def until_of(kind: str, cutoff: datetime) -> datetime:
    return cutoff + LIFETIME[kind]


def instance_sid(instance_id: str, until: datetime) -> str:
    return f"CordonRevoke{instance_id.replace('-', '')}Until{until.strftime('%Y%m%d%H%M')}"


def instance_statement(instance_id: str, instance_arn: str, cutoff: datetime) -> dict[str, Any]:
    """Deny everything to credentials issued to this instance before the cut-off.
    `ec2:SourceInstanceARN` names the instance they were delivered to, so other
    instances sharing the role keep working."""
    return {
        "Sid": instance_sid(instance_id, until_of("instance", cutoff)),
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {
            "StringEquals": {"ec2:SourceInstanceARN": instance_arn},
            "DateLessThan": {"aws:TokenIssueTime": stamp(cutoff)},
        },
    }


def fleet_prefix(fleet_id: str) -> str:
    return f"CordonRevokeFleet{fleet_id.replace('-', '')}Until"


def fleet_statement(fleet_id: str, instance_arns: list[str], cutoff: datetime
                    ) -> dict[str, Any]:
    """One statement for a fleet's instances: a statement each would not fit fifty
    instances of one role in IAM's 10,240 characters. Its cut-off is the latest of its
    members' (they are contained together, within a minute: none was given credentials
    between its own cut-off and the latest, its profile being gone)."""
    return {
        "Sid": fleet_prefix(fleet_id) + until_of("instance", cutoff).strftime("%Y%m%d%H%M"),
        "Effect": "Deny",
        "Action": "*",
        "Resource": "*",
        "Condition": {
            "StringEquals": {"ec2:SourceInstanceARN": sorted(instance_arns)},
            "DateLessThan": {"aws:TokenIssueTime": stamp(cutoff)},
        },
    }


def covering(doc: dict[str, Any] | None, instance_arn: str) -> dict[str, Any] | None:
    """The statement that denies this instance's older credentials (its own, or its
    fleet's)."""
    for s in statements(doc):
        arns = (s.get("Condition") or {}).get("StringEquals", {}).get("ec2:SourceInstanceARN")
        if arns == instance_arn or (isinstance(arns, list) and instance_arn in arns):
            return s
    return None


def cutoff_of(statement: dict[str, Any] | None) -> str:
    return str(((statement or {}).get("Condition") or {}).get("DateLessThan", {}).get(
        "aws:TokenIssueTime", ""))


def merged_fleet(doc: dict[str, Any] | None, fleet_id: str, instance_arn: str,
                 cutoff: datetime, now: datetime, others: int = 0) -> dict[str, Any]:
    """The role's Cordon policy with this instance added to its fleet's statement."""
    prefix = fleet_prefix(fleet_id)
    current = next((s for s in statements(doc) if str(s.get("Sid", "")).startswith(prefix)),
                   None)
    arns = {instance_arn}
    if current is not None:
        listed = current["Condition"]["StringEquals"]["ec2:SourceInstanceARN"]
        arns |= set(listed if isinstance(listed, list) else [listed])
        cutoff = max(cutoff, datetime.strptime(cutoff_of(current), _TIME).replace(tzinfo=UTC))
    return _merged(doc, prefix, fleet_statement(fleet_id, sorted(arns), cutoff), now, others)


def statements(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not doc:
        return []
    found = doc.get("Statement", [])
    return [found] if isinstance(found, dict) else list(found)


def until_in(statement: dict[str, Any] | None) -> datetime | None:
    """When an instance statement's tokens have all expired (from its Sid)."""
    return _until(statement) if statement else None


def _until(statement: dict[str, Any]) -> datetime | None:
    m = _SID.match(str(statement.get("Sid", "")))
    if not m:
        return None
    return datetime.strptime(m.group("until"), "%Y%m%d%H%M").replace(tzinfo=UTC)


def statement_for(doc: dict[str, Any] | None, instance_id: str) -> dict[str, Any] | None:
    prefix = f"CordonRevoke{instance_id.replace('-', '')}Until"
    return next((s for s in statements(doc) if str(s.get("Sid", "")).startswith(prefix)),
                None)


def merged(doc: dict[str, Any] | None, instance_id: str, statement: dict[str, Any],
           now: datetime, others: int = 0) -> dict[str, Any]:
    """The role's Cordon policy with this instance's statement (replacing an earlier
    one of the same instance only if the new one reaches further), without statements
    whose tokens have all expired. `others`: the characters the role's other inline
    policies already take of IAM's limit."""
    return _merged(doc, f"CordonRevoke{instance_id.replace('-', '')}Until", statement, now,
                   others)


def _merged(doc: dict[str, Any] | None, prefix: str, statement: dict[str, Any],
            now: datetime, others: int) -> dict[str, Any]:
    kept = []
    for s in statements(doc):
        until = _until(s)
        if until is not None and until <= now:
            continue  # every token it could hit has expired
        if str(s.get("Sid", "")).startswith(prefix):
            continue
        kept.append(s)
    kept.append(statement)
    document = {"Version": "2012-10-17", "Statement": kept}
    size = policy_size(document)
    if size + others > ROLE_INLINE_LIMIT:
        raise PolicyTooLarge(f"{len(kept)} revocations ({size} characters) and the role's "
                             f"other inline policies ({others}) do not fit in IAM's "
                             f"{ROLE_INLINE_LIMIT} characters of inline policy per role")
    return document


def policy_size(document: dict[str, Any]) -> int:
    """How much of IAM's limit a document takes: whitespace is not counted."""
    return len(re.sub(r"\s", "", json.dumps(document, separators=(",", ":"))))


def _iam_call(clients: Clients, verb: str, kind: str, principal: str, **kwargs: Any) -> Any:
    """iam.{verb}_{kind}_policy/policies, e.g. get_role_policy(RoleName=…)."""
    iam = clients.client("iam")
    name = f"{verb}_{kind}_policies" if verb == "list" else f"{verb}_{kind}_policy"
    return getattr(iam, name)(**{f"{kind.capitalize()}Name": principal}, **kwargs)


def read_policy(clients: Clients, kind: str, principal: str, name: str
                ) -> dict[str, Any] | None:
    try:
        doc = _iam_call(clients, "get", kind, principal, PolicyName=name)["PolicyDocument"]
    except ClientError as exc:
        if describe_error(exc).code == "NoSuchEntity":
            return None
        raise
    return json.loads(doc) if isinstance(doc, str) else dict(doc)


def others_size(clients: Clients, kind: str, principal: str, name: str) -> int:
    """The characters the principal's other inline policies take of IAM's limit."""
    names = [n for n in _iam_call(clients, "list", kind, principal)["PolicyNames"] if n != name]
    docs = parallel(lambda n: read_policy(clients, kind, principal, n), names)
    return sum(policy_size(d) for d in docs if d)


def write_policy(clients: Clients, lock: Lock, kind: str, principal: str, principal_arn: str,
                 name: str, build: Callable[[dict[str, Any] | None, int], dict[str, Any]],
                 holds: Callable[[dict[str, Any] | None], bool]) -> dict[str, Any]:
    """Read, merge (`build(current, others)`) and write one principal's revocation policy
    while holding the principal's lock; then describe it again: `holds` must be true of
    what IAM now has, or StepFailed. Returns what was written."""
    with lock(principal_arn):
        current, others = both(lambda: read_policy(clients, kind, principal, name),
                               lambda: others_size(clients, kind, principal, name))
        document = build(current, others)
        _iam_call(clients, "put", kind, principal, PolicyName=name,
                  PolicyDocument=json.dumps(document))
        seen = read_policy(clients, kind, principal, name)
    if not holds(seen):
        raise StepFailed("VerificationFailed", f"{name} on {kind} {principal} does not hold "
                         "the revocation after it was written")
    return document


def get_role_policy(clients: Clients, role: str, name: str = ROLE_POLICY
                    ) -> dict[str, Any] | None:
    return read_policy(clients, "role", role, name)


def expire(clients: Clients, revocation: dict[str, Any], now: datetime, lock: Lock,
           principal_arn: str) -> str:
    """Remove a revocation whose tokens have all expired; returns what was done. A
    revocation that a later incident has since replaced (a later cut-off) is left. Holds
    the principal's lock, as every writer does: a statement written meanwhile is kept."""
    with lock(principal_arn):
        return _expire(clients, revocation, now)


def _expire(clients: Clients, revocation: dict[str, Any], now: datetime) -> str:
    iam = clients.client("iam")
    kind, principal, policy = revocation["kind"], revocation["principal"], revocation["policy"]
    if kind == "instance":
        doc = get_role_policy(clients, principal, policy)
        left = [s for s in statements(doc) if s.get("Sid") != revocation["sid"]
                and not ((u := _until(s)) is not None and u <= now)]
        if doc is None or len(left) == len(statements(doc)):
            return f"{policy} on role {principal}: nothing left to remove"
        if left:
            iam.put_role_policy(RoleName=principal, PolicyName=policy,
                                PolicyDocument=json.dumps({"Version": "2012-10-17",
                                                           "Statement": left}))
        else:
            _delete(lambda: iam.delete_role_policy(RoleName=principal, PolicyName=policy))
        return f"statement {revocation['sid']} removed from {policy} on role {principal}"
    get = iam.get_role_policy if kind == "role" else iam.get_user_policy
    delete = iam.delete_role_policy if kind == "role" else iam.delete_user_policy
    key = "RoleName" if kind == "role" else "UserName"
    try:
        current = get(**{key: principal}, PolicyName=policy)["PolicyDocument"]
    except ClientError as exc:
        if describe_error(exc).code == "NoSuchEntity":
            return f"{policy} on {kind} {principal} was already gone"
        raise
    current = json.loads(current) if isinstance(current, str) else current
    cutoffs = {s.get("Condition", {}).get("DateLessThan", {}).get("aws:TokenIssueTime")
               for s in statements(current)}
    if cutoffs != {revocation["cutoff"]}:
        return f"{policy} on {kind} {principal} was replaced by a later revocation; kept"
    _delete(lambda: delete(**{key: principal}, PolicyName=policy))
    return f"{policy} removed from {kind} {principal}"


def _delete(call: Any) -> None:
    try:
        call()
    except ClientError as exc:
        if describe_error(exc).code != "NoSuchEntity":
            raise
