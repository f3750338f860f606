"""The last step: describe everything again and say, in one message, what is contained,
what was preserved and what failed."""

from __future__ import annotations

from typing import Any

from handlers import revocation
from handlers.base import (
    STEP_DONE,
    Observation,
    Outcome,
    StepContext,
    StepStatus,
    VerificationFailed,
)
from handlers.ec2_lookup import describe_instance, off_group
from handlers.fanout import parallel
from handlers.instance_profile import instance_arn_of, profile_association
from handlers.isolation import SEALED, find_group_pair, is_sealed
from handlers.tagging import set_status_tag


class VerifyContainment(Observation):
    name = "verify-containment"
    description = "describe everything again; one summary of what is contained, kept, failed"
    permissions = ("ec2:DescribeInstances", "ec2:DescribeSecurityGroups",
                   "ec2:DescribeIamInstanceProfileAssociations", "ec2:CreateTags",
                   "iam:GetRolePolicy")

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        """Every cut the playbook claims, described again in AWS — not read from the step
        records, which a run resumed after the database went away may lack (a step found
        already in place records no details): the sealed group is found by its tags, the
        revocation read from the role."""
        history = ctx.history
        isolation = history.get("isolate-security-groups", {})
        sealed_id = (isolation.get("details") or {}).get("sealed_group")
        profile = history.get("remove-instance-profile") or {}
        role = (profile.get("captured") or {}).get("role")

        def sealed_group() -> dict[str, Any] | None:
            if sealed_id:
                groups = ctx.clients.ec2.describe_security_groups(GroupIds=[sealed_id])
                return dict(groups["SecurityGroups"][0])
            vpc_id = ctx.target.facts.get("vpc_id")
            return find_group_pair(ctx.clients, vpc_id).get(SEALED) if vpc_id else None

        def revoked() -> bool | None:
            if not role:
                return None
            doc = revocation.get_role_policy(ctx.clients, role)
            return revocation.covering(doc, instance_arn_of(ctx)) is not None

        inst, group, assoc, held = parallel(lambda f: f(), [
            lambda: describe_instance(ctx.clients, ctx.target.resource_id),
            sealed_group,
            lambda: profile_association(ctx),
            revoked,
        ])
        if group is not None:
            sealed_id = group["GroupId"]
        contained, kept, failed = [], [], []
        enis = (inst or {}).get("NetworkInterfaces", [])
        network_ok = (inst is not None and group is not None and is_sealed(group)
                      and not off_group(inst, str(sealed_id)))
        if network_ok:
            contained.append(f"network ({len(enis)} ENIs on cordon-sealed)")
        else:
            failed.append("network is NOT isolated")
        if assoc is None and "remove-instance-profile" in history:
            contained.append("no instance profile")
        elif assoc is not None:
            failed.append(f"instance profile still associated ({assoc['profile_arn']})")
        if held:
            contained.append(f"its credentials revoked on role {role}")
        elif held is False:
            failed.append(f"the revocation on role {role} is NOT in place")
        for name, step in history.items():
            details = step.get("details") or {}
            if step.get("status") == StepStatus.FAILED and name != self.name:
                failed.append(f"{name} ({step.get('error_code')})")
            if name == "protect-evidence" and step.get("status") in STEP_DONE:
                contained.append("termination/stop protected")
            if name == "detach-from-auto-scaling" and step.get("status") == StepStatus.SUCCEEDED:
                contained.append("out of Auto Scaling and load balancers")
            kept += [s["id"] for s in details.get("snapshots", [])]
            if details.get("image"):
                kept.append(details["image"])
            if details.get("files"):
                kept.append(f"{len(details['files'])} evidence files")
        status = "contained" if not failed else "partially-contained"
        set_status_tag(ctx, status)
        summary = (f"contained: {', '.join(contained) or 'nothing'} | preserved: "
                   f"{', '.join(kept) or 'nothing'} | failed: {', '.join(failed) or 'nothing'}")
        return Outcome(summary, {"network_isolated": network_ok, "preserved": kept,
                                 "failed": failed})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        """`contained` only when every cut is seen in place: anything in `failed` makes the
        incident partially contained, and the summary names what is missing."""
        if outcome.details["failed"]:
            raise VerificationFailed("not contained: " + "; ".join(outcome.details["failed"]),
                                     outcome.summary)
        return "every cut in place"
