"""A compromised IAM role: every session of it issued before the cut is denied (the
`revoke-role-sessions` step), and with `trust=deny` nobody may assume it again until a
release puts its trust policy back exactly.

What real AWS does that the tests on moto cannot show:
- The deny on older sessions (`aws:TokenIssueTime`) hits *every* session of the role —
  the instances of its instance profiles and the services that assume it get new
  credentials on their next refresh (an instance's within minutes, from its metadata
  service), others must assume it again. moto evaluates no policy.
- IAM is eventually consistent: a new trust policy takes effect "within a few minutes".
- A trust policy may not use `sts:AssumeRole*` in IAM's console examples; moto refuses
  the wildcard, so the deny lists `sts:AssumeRole`, `sts:AssumeRoleWithSAML` and
  `sts:AssumeRoleWithWebIdentity`. A deny in a trust policy wins over every allow in it.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from handlers.aws import Clients
from handlers.base import Action, Outcome, StepContext, VerificationFailed
from handlers.fanout import parallel
from handlers.retry import describe_error

LOOKUP_PERMISSIONS = (
    "sts:GetCallerIdentity", "iam:GetRole", "iam:ListInstanceProfilesForRole",
    "iam:ListAttachedRolePolicies", "iam:ListRolePolicies",
    "ec2:DescribeIamInstanceProfileAssociations",
)
ASSUME_ACTIONS = ["sts:AssumeRole", "sts:AssumeRoleWithSAML", "sts:AssumeRoleWithWebIdentity"]
DENY_TRUST = {"Version": "2012-10-17", "Statement": [{
    "Sid": "CordonDenyAssume", "Effect": "Deny", "Principal": "*", "Action": ASSUME_ACTIONS}]}


class RoleNotFound(Exception):
    pass


def _document(value: Any) -> dict[str, Any]:
    """A policy document as IAM returns it (boto3 decodes it; some SDKs leave it URL-
    encoded JSON)."""
    if isinstance(value, dict):
        return value
    return dict(json.loads(unquote(str(value))))


def trusted(document: dict[str, Any]) -> dict[str, list[str]]:
    """Who the trust policy lets assume the role, by kind (Service, AWS, Federated)."""
    found: dict[str, list[str]] = {}
    statements = document.get("Statement", [])
    for st in statements if isinstance(statements, list) else [statements]:
        if st.get("Effect") != "Allow":
            continue
        principal = st.get("Principal", {})
        if principal == "*":
            found.setdefault("AWS", []).append("*")
            continue
        for kind, who in principal.items():
            found.setdefault(kind, []).extend(who if isinstance(who, list) else [who])
    return found


def describe_role(clients: Clients, name: str, account: str, regions: list[str]
                  ) -> dict[str, Any]:
    """The role, who may assume it, and what uses it now: its instance profiles and the
    instances they are associated with, in every configured region."""
    iam = clients.client("iam")
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except ClientError as exc:
        if describe_error(exc).code in ("NoSuchEntity", "NoSuchEntityException"):
            raise RoleNotFound(f"no IAM role {name} in account {account}") from exc
        raise
    trust = _document(role.get("AssumeRolePolicyDocument") or {})
    profiles = iam.list_instance_profiles_for_role(RoleName=name)["InstanceProfiles"]
    arns = [p["Arn"] for p in profiles]

    def running(region: str) -> list[dict[str, str]]:
        """Instances with one of the profiles associated (EC2 keeps the association for
        a running or stopped instance)."""
        if not arns:
            return []
        pages = clients.in_region(region).ec2.get_paginator(
            "describe_iam_instance_profile_associations").paginate(
            Filters=[{"Name": "state", "Values": ["associating", "associated"]}])
        return [{"id": a["InstanceId"], "region": region,
                 "profile": a["IamInstanceProfile"]["Arn"].split("/")[-1]}
                for page in pages for a in page["IamInstanceProfileAssociations"]
                if a["IamInstanceProfile"]["Arn"] in arns]

    instances = [i for found in parallel(running, regions) for i in found]
    attached = [p["PolicyName"] for p in
                iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]]
    inline = list(iam.list_role_policies(RoleName=name)["PolicyNames"])
    return {"role": name, "role_arn": role["Arn"], "account": account, "trust": trust,
            "trusted": trusted(trust), "instance_profiles": [p["InstanceProfileName"]
                                                             for p in profiles],
            "role_instances": instances, "attached_policies": attached,
            "inline_policies": inline}


def plan_lines(facts: dict[str, Any], trust_deny: bool) -> list[str]:
    users = [f"{len(facts.get('role_instances', []))} running instance(s) of its instance "
             f"profile(s)"] + [f"{kind} {', '.join(who)}"
                               for kind, who in facts.get("trusted", {}).items()]
    lines = ["sessions of the role issued before the cut: allowed → denied (all of them — "
             + "; ".join(users) + " — get new credentials or assume it again)"]
    lines.append("trust policy: as now → deny " + ", ".join(ASSUME_ACTIONS) + " to everyone"
                 if trust_deny else "trust policy: unchanged (add trust=deny to stop anyone "
                 "assuming it)")
    return lines


class DenyRoleTrust(Action):
    name = "deny-role-trust"
    description = ("replace the role's trust policy with one that denies every AssumeRole "
                   "(only with trust=deny; the policy is put back exactly on release)")
    permissions = ("iam:GetRole", "iam:UpdateAssumeRolePolicy")

    def skip_reason(self, ctx: StepContext) -> str | None:
        if ctx.options.get("trust") != "deny":
            return "not asked (add trust=deny to stop anyone assuming the role)"
        return None

    def _trust(self, ctx: StepContext) -> dict[str, Any]:
        role = ctx.clients.client("iam").get_role(RoleName=ctx.target.facts["role"])["Role"]
        return _document(role.get("AssumeRolePolicyDocument") or {})

    def check(self, ctx: StepContext) -> bool:
        ctx.memo["trust"] = self._trust(ctx)
        return bool(ctx.memo["trust"] == DENY_TRUST)

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return {"role": ctx.target.facts["role"], "trust": ctx.memo.get("trust")
                or self._trust(ctx)}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ctx.clients.client("iam").update_assume_role_policy(
            RoleName=captured["role"], PolicyDocument=json.dumps(DENY_TRUST))
        return Outcome(f"trust policy of {captured['role']}: nobody may assume it "
                       "(the previous one is recorded for the release)")

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        if self._trust(ctx) != DENY_TRUST:
            raise VerificationFailed("the trust policy is not the deny")
        return "trust policy denies every AssumeRole"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return f"put back the trust policy of {captured.get('role')} as it was"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ctx.clients.client("iam").update_assume_role_policy(
            RoleName=captured["role"], PolicyDocument=json.dumps(captured["trust"]))
        if self._trust(ctx) != captured["trust"]:
            raise VerificationFailed("the trust policy read back differs from the recorded one")
        return Outcome(f"trust policy of {captured['role']} put back as it was (read back "
                       "equal)")
