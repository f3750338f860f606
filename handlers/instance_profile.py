"""Take the instance's IAM role away, and revoke the credentials it already holds —
for this instance only, so that other instances sharing the role keep working."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from handlers import revocation
from handlers.arns import iam_arn, instance_arn
from handlers.base import (
    Action,
    Outcome,
    StepContext,
    StepFailed,
    VerificationFailed,
)
from handlers.retry import describe_error


def profile_association(ctx: StepContext) -> dict[str, Any] | None:
    resp = ctx.clients.ec2.describe_iam_instance_profile_associations(Filters=[
        {"Name": "instance-id", "Values": [ctx.target.resource_id]},
        {"Name": "state", "Values": ["associating", "associated"]},
    ])
    for assoc in resp.get("IamInstanceProfileAssociations", []):
        return {"id": assoc["AssociationId"], "profile_arn": assoc["IamInstanceProfile"]["Arn"]}
    return None


def _account(ctx: StepContext) -> str:
    return str(ctx.target.account or ctx.target.facts.get("account", ""))


def instance_arn_of(ctx: StepContext) -> str:
    return instance_arn(ctx.target.region, _account(ctx), ctx.target.resource_id)


def role_arn(ctx: StepContext, role: str) -> str:
    """The key of the role's revocation lock (and what the thread names)."""
    return iam_arn(ctx.target.region, _account(ctx), "role", role)


def _role_of(ctx: StepContext, profile_arn: str) -> str | None:
    name = profile_arn.rsplit("/", 1)[-1]
    profile = ctx.clients.client("iam").get_instance_profile(InstanceProfileName=name)
    roles = profile["InstanceProfile"].get("Roles", [])
    return str(roles[0]["RoleName"]) if roles else None


# Credentials issued up to this long after the disassociation are denied too: the clocks
# of Cordon's host and of AWS may differ a little, and the instance gets no new
# credentials once its profile is gone anyway.
CUTOFF_MARGIN = timedelta(seconds=60)


class RemoveInstanceProfile(Action):
    name = "remove-instance-profile"
    description = ("disassociate its instance profile, then revoke the credentials the "
                   "instance already holds (a deny on its role for this instance only)")
    permissions = (
        "ec2:DescribeIamInstanceProfileAssociations",
        "ec2:DisassociateIamInstanceProfile",
        "ec2:AssociateIamInstanceProfile",
        "iam:GetInstanceProfile",
        "iam:GetRolePolicy",
        "iam:PutRolePolicy",
        "iam:ListRolePolicies",
        "iam:PassRole",
    )

    def _role(self, ctx: StepContext, profile_arn: str | None) -> str | None:
        if not profile_arn:
            return None
        return ctx.remember("role", lambda: _role_of(ctx, profile_arn))

    def check(self, ctx: StepContext) -> bool:
        """Done when no profile is associated and, if the instance had one, its role
        holds this instance's revocation (the profile goes first, so a crash between
        the two leaves the revocation still to write)."""
        ctx.memo["association"] = profile_association(ctx)
        if ctx.memo["association"] is not None:
            return False
        role = self._role(ctx, ctx.target.facts.get("instance_profile"))
        if role is None:
            return True
        doc = revocation.get_role_policy(ctx.clients, role)
        return revocation.covering(doc, instance_arn_of(ctx)) is not None

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        assoc = ctx.memo.get("association") or profile_association(ctx)
        if assoc is None and ctx.target.facts.get("instance_profile"):
            # Already disassociated (an earlier attempt): the revocation is still owed.
            assoc = {"id": None, "profile_arn": ctx.target.facts["instance_profile"]}
        if assoc is None:
            return {"association": None}
        return {"association": assoc, "role": self._role(ctx, assoc["profile_arn"]),
                "policy_name": revocation.ROLE_POLICY}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        assoc = captured["association"]
        if assoc is None:
            return Outcome("no instance profile", {"revoked": False})
        name = assoc["profile_arn"].rsplit("/", 1)[-1]
        # First the profile goes: from now on the instance gets no new credentials.
        if assoc.get("id"):
            try:
                ctx.clients.ec2.disassociate_iam_instance_profile(AssociationId=assoc["id"])
            except ClientError:
                # A retry after a lost answer is refused (the association is gone): the
                # revocation below is still owed. Anything else stops the step.
                if profile_association(ctx) is not None:
                    raise
        parts = [f"{name} disassociated"]
        role = captured.get("role")
        if not role:
            return Outcome(parts[0] + "; its profile has no role", {"revoked": False})
        # Then every credential it was handed before that moment is denied.
        cutoff = datetime.now(UTC).replace(microsecond=0) + CUTOFF_MARGIN
        arn = instance_arn_of(ctx)
        fleet = ctx.target.facts.get("fleet_id")
        statement = revocation.instance_statement(ctx.target.resource_id, arn, cutoff)

        def build(current: dict[str, Any] | None, others: int) -> dict[str, Any]:
            nonlocal statement
            if not fleet:
                return revocation.merged(current, ctx.target.resource_id, statement,
                                         datetime.now(UTC), others)
            document = revocation.merged_fleet(current, fleet, arn, cutoff,
                                               datetime.now(UTC), others)
            statement = revocation.covering(document, arn) or statement
            return document

        try:
            revocation.write_policy(
                ctx.clients, ctx.lock, "role", role, role_arn(ctx, role), revocation.ROLE_POLICY,
                build, lambda seen: revocation.cutoff_of(revocation.covering(seen, arn))
                >= revocation.stamp(cutoff))
        except StepFailed as exc:
            raise StepFailed(exc.code, exc.message + ". Credentials the instance already holds "
                             "stay valid until they expire (up to 12 h)",
                             f"{name} disassociated (the instance gets no new credentials)"
                             ) from exc
        except (revocation.PolicyTooLarge, ClientError) as exc:
            err = describe_error(exc)
            code = "LimitExceeded" if isinstance(exc, revocation.PolicyTooLarge) else err.code
            raise StepFailed(code, f"the revocation could not be written on role {role}: "
                             f"{err.message}. Credentials the instance already holds stay "
                             "valid until they expire (up to 12 h): free inline-policy space "
                             f"on {role} and retry, or rotate what the role can reach",
                             f"{name} disassociated (the instance gets no new credentials)"
                             ) from exc
        until = revocation.until_of("instance", cutoff)
        parts.append(
            f"credentials issued to this instance before {revocation.cutoff_of(statement)} "
            f"revoked: role {role} denies * to them ({revocation.ROLE_POLICY}, statement "
            f"{statement['Sid']}"
            + (" — its fleet's one statement" if fleet else "")
            + ": ec2:SourceInstanceARN + aws:TokenIssueTime); other "
            f"instances using the role keep working. The revocation stays until "
            f"{revocation.stamp(until)}, when every credential it could hit has expired "
            "— a release does not remove it")
        record = {"kind": "instance", "principal": role, "policy": revocation.ROLE_POLICY,
                  "sid": statement["Sid"], "cutoff": revocation.stamp(cutoff),
                  "until": revocation.stamp(until)}
        return Outcome("; ".join(parts), {"revoked": True, "statement": statement,
                                          "issued_before": revocation.stamp(cutoff),
                                          "revocations": [record]})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        if captured["association"] is None:
            return "no instance profile"
        if profile_association(ctx) is not None:
            raise VerificationFailed("the instance profile is still associated")
        if outcome.details.get("revoked"):
            doc = revocation.get_role_policy(ctx.clients, captured["role"])
            held = revocation.covering(doc, instance_arn_of(ctx))
            if revocation.cutoff_of(held) < outcome.details["issued_before"]:
                raise VerificationFailed(f"{revocation.ROLE_POLICY} does not hold the "
                                         "revocation")
            return "no profile associated; revocation in place"
        return "no profile associated"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        if not captured.get("association"):
            return "nothing (it had no instance profile)"
        return (f"re-associate {captured['association']['profile_arn'].rsplit('/', 1)[-1]}"
                + (f" (the revocation on role {captured['role']} stays until every "
                   "credential it could hit has expired)" if captured.get("role") else ""))

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        """Re-associate the profile. The revocation stays: removing it would bring back to
        life credentials an attacker may hold; the sweep removes it once they expired."""
        assoc = captured.get("association")
        if not assoc:
            return Outcome("nothing to restore")
        if profile_association(ctx) is None:
            ctx.clients.ec2.associate_iam_instance_profile(
                IamInstanceProfile={"Arn": assoc["profile_arn"]},
                InstanceId=ctx.target.resource_id)
        said = f"{assoc['profile_arn'].rsplit('/', 1)[-1]} re-associated (new credentials work)"
        if captured.get("role"):
            doc = revocation.get_role_policy(ctx.clients, captured["role"])
            until = revocation.until_in(revocation.covering(doc, instance_arn_of(ctx)))
            if until is not None:
                said += ("; the credentials it held before the containment stay revoked "
                         f"until {revocation.stamp(until)}, when every one of them has expired")
        return Outcome(said)
