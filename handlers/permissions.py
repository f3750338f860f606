"""Every AWS call Cordon makes belongs to a declared unit: a step's action, or one of
the look-ups below. The IAM policy is generated from these declarations."""

from __future__ import annotations

from typing import Any

from handlers.access_keys import LOOKUP_PERMISSIONS as KEY_LOOKUP
from handlers.base import all_actions
from handlers.ec2_lookup import PERMISSIONS as INSTANCE_LOOKUP
from handlers.isolation import PREPARE_PERMISSIONS, IsolateSecurityGroups
from handlers.revocation import PERMISSIONS as REVOCATION_EXPIRY

LOOKUPS: dict[str, tuple[str, ...]] = {
    "lookup-instance": INSTANCE_LOOKUP,
    "blast-radius": ("ec2:DescribeInstances", "ec2:DescribeNetworkAcls",
                     "ec2:DescribeRouteTables"),
    "lookup-key": KEY_LOOKUP,
    "snapshot-follow-up": ("ec2:DescribeSnapshots",),
    "revocation-expiry": REVOCATION_EXPIRY,
    "prepare": PREPARE_PERMISSIONS + IsolateSecurityGroups.permissions,
    "assume-role": ("sts:AssumeRole", "sts:SetSourceIdentity"),
    "preflight": ("sts:GetCallerIdentity", "ec2:DescribeInstances", "ec2:DescribeSecurityGroups",
                  "ec2:DescribeVpcs", "ec2:DescribeRegions"),
}

# Created only with the tag cordon:managed=true, so the policy can require it.
CREATED_WITH_TAG = {"ec2:CreateSecurityGroup", "ec2:CreateNetworkAcl", "ec2:CreateRouteTable"}
# Changed only on what Cordon created and tagged.
MANAGED_ONLY = {"ec2:AuthorizeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress",
                "ec2:RevokeSecurityGroupIngress", "ec2:RevokeSecurityGroupEgress"}
TAGGING = {"ec2:CreateTags", "ec2:DeleteTags"}
READ_PREFIXES = ("Describe", "Get", "List", "Lookup")


def declared(units: list[str] | None = None) -> dict[str, tuple[str, ...]]:
    """Permissions by unit (action or look-up); all of them when `units` is None."""
    table = {name: cls.permissions for name, cls in all_actions().items()}
    table.update(LOOKUPS)
    if units is None:
        return table
    return {name: table[name] for name in units}


def iam_action(signing_name: str, operation: str) -> str:
    """The IAM action for a botocore operation (e.g. elasticloadbalancing:DeregisterTargets)."""
    return f"{signing_name}:{operation}"


def build_policy(units: list[str] | None = None) -> dict[str, Any]:
    """The least-privilege policy for these units: no wildcard in any action; creation
    only with the cordon:managed tag; rule changes only on cordon:managed groups."""
    actions = sorted({a for perms in declared(units).values() for a in perms})
    read = [a for a in actions if a.split(":")[1].startswith(READ_PREFIXES)]
    created = [a for a in actions if a in CREATED_WITH_TAG]
    managed = [a for a in actions if a in MANAGED_ONLY]
    tagging = [a for a in actions if a in TAGGING]
    rest = [a for a in actions
            if a not in set(read) | set(created) | set(managed) | set(tagging)]
    statements: list[dict[str, Any]] = []
    if read:
        statements.append({"Sid": "Read", "Effect": "Allow", "Action": read, "Resource": "*"})
    if created:
        statements.append({
            "Sid": "CreateOnlyTagged", "Effect": "Allow", "Action": created, "Resource": "*",
            "Condition": {"StringEquals": {"aws:RequestTag/cordon:managed": "true"}}})
    if managed:
        statements.append({
            "Sid": "ChangeOnlyManagedGroups", "Effect": "Allow", "Action": managed,
            "Resource": "arn:aws:ec2:*:*:security-group/*",
            "Condition": {"StringEquals": {"aws:ResourceTag/cordon:managed": "true"}}})
    if tagging:
        statements.append({
            "Sid": "Tag", "Effect": "Allow", "Action": tagging,
            "Resource": ["arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:*::snapshot/*",
                         "arn:aws:ec2:*::image/*", "arn:aws:ec2:*:*:security-group/*",
                         "arn:aws:ec2:*:*:network-acl/*", "arn:aws:ec2:*:*:route-table/*"]})
    if rest:
        statements.append({"Sid": "Contain", "Effect": "Allow", "Action": rest, "Resource": "*"})
    return {"Version": "2012-10-17", "Statement": statements}
