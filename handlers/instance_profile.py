"""Take the instance's IAM role away, and revoke the credentials it already holds —
for this instance only, so that other instances sharing the role keep working."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from handlers.aws import describe_error
from handlers.base import Action, Outcome, StepContext, VerificationFailed, register


def revocation_policy_name(instance_id: str) -> str:
    return f"cordon-revoke-{instance_id}"


def revocation_policy(instance_arn: str, issued_before: str) -> dict[str, Any]:
    """Deny everything to credentials that were issued to this instance before now.
    `aws:TokenIssueTime` exists for temporary credentials — which is what an instance
    profile hands out — and `ec2:SourceInstanceARN` names the instance they were
    delivered to."""
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "CordonRevokeInstanceSessions",
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {
                "StringEquals": {"ec2:SourceInstanceARN": instance_arn},
                "DateLessThan": {"aws:TokenIssueTime": issued_before},
            },
        }],
    }


def profile_association(ctx: StepContext) -> dict[str, Any] | None:
    resp = ctx.clients.ec2.describe_iam_instance_profile_associations(Filters=[
        {"Name": "instance-id", "Values": [ctx.target.resource_id]},
        {"Name": "state", "Values": ["associating", "associated"]},
    ])
    for assoc in resp.get("IamInstanceProfileAssociations", []):
        return {"id": assoc["AssociationId"], "profile_arn": assoc["IamInstanceProfile"]["Arn"]}
    return None


def _instance_arn(ctx: StepContext) -> str:
    t = ctx.target
    account = t.account or t.facts.get("account", "")
    return f"arn:aws:ec2:{t.region}:{account}:instance/{t.resource_id}"


def _role_of(ctx: StepContext, profile_arn: str) -> str | None:
    name = profile_arn.rsplit("/", 1)[-1]
    profile = ctx.clients.client("iam").get_instance_profile(InstanceProfileName=name)
    roles = profile["InstanceProfile"].get("Roles", [])
    return str(roles[0]["RoleName"]) if roles else None


def _current_policy(ctx: StepContext, role: str, name: str) -> dict[str, Any] | None:
    try:
        doc = ctx.clients.client("iam").get_role_policy(RoleName=role, PolicyName=name)
    except ClientError as exc:
        if describe_error(exc).code == "NoSuchEntity":
            return None
        raise
    document = doc["PolicyDocument"]
    return json.loads(document) if isinstance(document, str) else dict(document)


@register
class RemoveInstanceProfile(Action):
    name = "remove-instance-profile"
    description = ("revoke the credentials the instance already holds (a deny on its role for "
                   "this instance only), then disassociate its instance profile")
    permissions = (
        "ec2:DescribeIamInstanceProfileAssociations",
        "ec2:DisassociateIamInstanceProfile",
        "ec2:AssociateIamInstanceProfile",
        "iam:GetInstanceProfile",
        "iam:GetRolePolicy",
        "iam:PutRolePolicy",
        "iam:DeleteRolePolicy",
        "iam:PassRole",
    )

    def check(self, ctx: StepContext) -> bool:
        # The deny is written before the profile is taken away, so no association left
        # means both are done (or there was never a profile).
        ctx.memo["association"] = profile_association(ctx)
        return ctx.memo["association"] is None

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        assoc = ctx.memo.get("association") or profile_association(ctx)
        if assoc is None:
            return {"association": None}
        role = _role_of(ctx, assoc["profile_arn"])
        name = revocation_policy_name(ctx.target.resource_id)
        return {"association": assoc, "role": role, "policy_name": name,
                "prior_policy": _current_policy(ctx, role, name) if role else None}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        assoc = captured["association"]
        if assoc is None:
            return Outcome("no instance profile", {"revoked": False})
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        document = revocation_policy(_instance_arn(ctx), now)
        parts = []
        if captured.get("role"):
            ctx.clients.client("iam").put_role_policy(
                RoleName=captured["role"], PolicyName=captured["policy_name"],
                PolicyDocument=json.dumps(document))
            parts.append(
                f"credentials issued to this instance before {now} revoked: role "
                f"{captured['role']} now denies * to them (policy {captured['policy_name']}, "
                "condition ec2:SourceInstanceARN + aws:TokenIssueTime); other instances "
                "using the role keep working")
        ctx.clients.ec2.disassociate_iam_instance_profile(AssociationId=assoc["id"])
        parts.insert(0, f"{assoc['profile_arn'].rsplit('/', 1)[-1]} disassociated")
        return Outcome("; ".join(parts), {"revoked": bool(captured.get("role")),
                                          "policy": document, "issued_before": now})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        if captured["association"] is None:
            return "no instance profile"
        if profile_association(ctx) is not None:
            raise VerificationFailed("the instance profile is still associated")
        if captured.get("role"):
            stored = _current_policy(ctx, captured["role"], captured["policy_name"])
            if stored != outcome.details["policy"]:
                raise VerificationFailed(f"{captured['policy_name']} is not in place")
        return "no profile associated; revocation policy in place"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        if not captured.get("association"):
            return "nothing (it had no instance profile)"
        return (f"re-associate {captured['association']['profile_arn'].rsplit('/', 1)[-1]}"
                + (f", remove {captured['policy_name']} from role {captured['role']}"
                   if captured.get("role") else ""))

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        assoc = captured.get("association")
        if not assoc:
            return Outcome("nothing to restore")
        if profile_association(ctx) is None:
            ctx.clients.ec2.associate_iam_instance_profile(
                IamInstanceProfile={"Arn": assoc["profile_arn"]},
                InstanceId=ctx.target.resource_id)
        if captured.get("role"):
            iam = ctx.clients.client("iam")
            if captured.get("prior_policy"):
                iam.put_role_policy(RoleName=captured["role"], PolicyName=captured["policy_name"],
                                    PolicyDocument=json.dumps(captured["prior_policy"]))
            else:
                try:
                    iam.delete_role_policy(RoleName=captured["role"],
                                           PolicyName=captured["policy_name"])
                except ClientError as exc:
                    if describe_error(exc).code != "NoSuchEntity":
                        raise
        return Outcome(self.describe_undo(captured))
