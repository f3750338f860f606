"""Every AWS call Cordon makes belongs to a declared unit: a step's action, or one of
the look-ups below. The IAM policy is generated from these declarations."""

from __future__ import annotations

from typing import Any

from handlers.access_keys import LOOKUP_PERMISSIONS as KEY_LOOKUP
from handlers.cloudtrail import PERMISSIONS as WATCH
from handlers.ec2_lookup import PERMISSIONS as INSTANCE_LOOKUP
from handlers.findings_queue import PERMISSIONS as FINDINGS_INTAKE
from handlers.fleet_lookup import PERMISSIONS as FLEET_LOOKUP
from handlers.iam_roles import LOOKUP_PERMISSIONS as ROLE_LOOKUP
from handlers.iam_users import LOOKUP_PERMISSIONS as USER_LOOKUP
from handlers.isolation import PREPARE_PERMISSIONS, IsolateSecurityGroups
from handlers.preflight import RULE_PERMISSIONS
from handlers.registry import all_actions
from handlers.revocation import PERMISSIONS as REVOCATION_EXPIRY
from handlers.s3_buckets import LOOKUP_PERMISSIONS as BUCKET_LOOKUP
from handlers.s3_buckets import SealBucket

LOOKUPS: dict[str, tuple[str, ...]] = {
    "lookup-instance": INSTANCE_LOOKUP,
    "lookup-fleet": FLEET_LOOKUP,
    "blast-radius": ("ec2:DescribeInstances", "ec2:DescribeNetworkAcls",
                     "ec2:DescribeRouteTables"),
    "lookup-key": KEY_LOOKUP,
    "lookup-user": USER_LOOKUP,
    "lookup-role": ROLE_LOOKUP,
    "lookup-bucket": BUCKET_LOOKUP,
    "snapshot-follow-up": ("ec2:DescribeSnapshots",),
    "revocation-expiry": REVOCATION_EXPIRY,
    "findings-intake": FINDINGS_INTAKE,
    "watch-cloudtrail": WATCH,
    "prepare": PREPARE_PERMISSIONS + IsolateSecurityGroups.permissions,
    "assume-role": ("sts:AssumeRole", "sts:SetSourceIdentity"),
    "preflight": ("sts:GetCallerIdentity", "ec2:DescribeInstances", "ec2:DescribeSecurityGroups",
                  "ec2:DescribeVpcs", "ec2:DescribeRegions", *RULE_PERMISSIONS),
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


# S3 operations whose IAM action has another name (S3's "Actions, resources, and
# condition keys" reference).
S3_OPERATION_ACTIONS = {
    "GetPublicAccessBlock": "GetBucketPublicAccessBlock",
    "PutPublicAccessBlock": "PutBucketPublicAccessBlock",
    "DeletePublicAccessBlock": "PutBucketPublicAccessBlock",
    "DeleteBucketOwnershipControls": "PutBucketOwnershipControls",
    "GetBucketReplication": "GetReplicationConfiguration",
}


def iam_action(signing_name: str, operation: str) -> str:
    """The IAM action for a botocore operation (e.g. elasticloadbalancing:DeregisterTargets)."""
    if signing_name == "s3":
        operation = S3_OPERATION_ACTIONS.get(operation, operation)
    return f"{signing_name}:{operation}"


EC2 = "arn:aws:ec2:*:*"
INSTANCE = f"{EC2}:instance/*"
QUEUES = "arn:aws:sqs:*:*:*"  # the template narrows it to the findings queue
# The role Cordon assumes in each account of CORDON_ACCOUNTS: the only role it may assume.
RESPONDER_ROLE = "CordonResponder"
# Where an action that acts on a resource may act: everything Cordon contains lives in
# some account of the organisation, so these are resource types, not names.
SCOPES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Instances", ("ec2:ModifyInstanceAttribute", "ec2:DescribeInstanceAttribute",
                   "ec2:GetConsoleOutput", "ec2:GetConsoleScreenshot",
                   "ec2:AssociateIamInstanceProfile", "ec2:DisassociateIamInstanceProfile"),
     (INSTANCE,)),
    ("Interfaces", ("ec2:ModifyNetworkInterfaceAttribute",),
     (f"{EC2}:network-interface/*", f"{EC2}:security-group/*")),
    ("Evidence", ("ec2:CreateSnapshots", "ec2:CreateImage"),
     (INSTANCE, f"{EC2}:volume/*", "arn:aws:ec2:*::snapshot/*", "arn:aws:ec2:*::image/*")),
    ("SubnetIsolation", ("ec2:CreateNetworkAclEntry", "ec2:DeleteNetworkAclEntry",
                         "ec2:ReplaceNetworkAclAssociation", "ec2:AssociateRouteTable",
                         "ec2:ReplaceRouteTableAssociation", "ec2:CreateRoute",
                         "ec2:DeleteRoute", "ec2:DisassociateRouteTable"),
     (f"{EC2}:network-acl/*", f"{EC2}:route-table/*", f"{EC2}:subnet/*", f"{EC2}:vpc/*",
      f"{EC2}:internet-gateway/*", f"{EC2}:egress-only-internet-gateway/*")),
    ("AutoScaling", ("autoscaling:AttachInstances", "autoscaling:DetachInstances"),
     ("arn:aws:autoscaling:*:*:autoScalingGroup:*:autoScalingGroupName/*",)),
    ("LoadBalancers", ("elasticloadbalancing:DeregisterTargets",
                       "elasticloadbalancing:RegisterTargets",
                       "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
                       "elasticloadbalancing:RegisterInstancesWithLoadBalancer"),
     ("arn:aws:elasticloadbalancing:*:*:targetgroup/*/*",
      "arn:aws:elasticloadbalancing:*:*:loadbalancer/*")),
    ("Identities", ("iam:GetAccessKeyLastUsed", "iam:GetInstanceProfile", "iam:GetLoginProfile",
                    "iam:GetRolePolicy", "iam:GetUserPolicy", "iam:ListAccessKeys",
                    "iam:ListAttachedUserPolicies", "iam:ListUserPolicies", "iam:ListRolePolicies",
                    "iam:DeleteLoginProfile", "iam:DeleteRolePolicy", "iam:DeleteUserPolicy",
                    "iam:PutRolePolicy", "iam:PutUserPolicy", "iam:UpdateAccessKey",
                    "iam:UpdateSigningCertificate", "iam:UpdateSSHPublicKey",
                    "iam:UpdateServiceSpecificCredential", "iam:GetUser",
                    "iam:ListSigningCertificates", "iam:ListSSHPublicKeys",
                    "iam:ListServiceSpecificCredentials", "iam:ListMFADevices",
                    "iam:ListGroupsForUser", "iam:GetRole", "iam:ListInstanceProfilesForRole",
                    "iam:ListAttachedRolePolicies", "iam:UpdateAssumeRolePolicy"),
     ("arn:aws:iam::*:role/*", "arn:aws:iam::*:user/*", "arn:aws:iam::*:instance-profile/*")),
    ("AssumeAccountRoles", ("sts:AssumeRole", "sts:SetSourceIdentity"),
     (f"arn:aws:iam::*:role/{RESPONDER_ROLE}",)),
    ("FindingsQueue", FINDINGS_INTAKE, (QUEUES,)),
    ("Buckets", tuple(sorted({*SealBucket.permissions, *(
        a for a in BUCKET_LOOKUP if a.startswith("s3:"))})), ("arn:aws:s3:::*",)),
)
# Every IAM write that could widen a role or user: what Cordon is denied on its own.
SELF_WRITES = ("iam:AddRoleToInstanceProfile", "iam:AttachRolePolicy", "iam:AttachUserPolicy",
               "iam:CreatePolicyVersion", "iam:DeleteRolePermissionsBoundary",
               "iam:DeleteRolePolicy", "iam:DeleteUserPermissionsBoundary",
               "iam:DeleteUserPolicy", "iam:DetachRolePolicy", "iam:DetachUserPolicy",
               "iam:PassRole", "iam:PutRolePermissionsBoundary", "iam:PutRolePolicy",
               "iam:PutUserPermissionsBoundary", "iam:PutUserPolicy", "iam:SetDefaultPolicyVersion",
               "iam:TagRole", "iam:UntagRole", "iam:UpdateAssumeRolePolicy", "iam:UpdateRole")

# The tags a created resource gets, only in the call that creates it.
CREATE_ACTIONS = ("CreateSecurityGroup", "CreateNetworkAcl", "CreateRouteTable",
                  "CreateSnapshots", "CreateImage")


def build_policy(units: list[str] | None = None) -> dict[str, Any]:
    """The least-privilege policy for these units: no wildcard in any action; each
    action on the resource types it acts on; creation only with the cordon:managed tag;
    rule changes only on cordon:managed groups; tags only at creation or `cordon:*`
    keys; the instance role passed only to EC2."""
    actions = sorted({a for perms in declared(units).values() for a in perms})
    statements: list[dict[str, Any]] = []
    placed: set[str] = set()

    def add(sid: str, chosen: list[str], resource: Any, condition: Any = None) -> None:
        if not chosen:
            return
        statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": chosen,
                                     "Resource": resource}
        if condition:
            statement["Condition"] = condition
        statements.append(statement)
        placed.update(chosen)

    scoped = {a for _, acts, _ in SCOPES for a in acts}
    add("Read", [a for a in actions if a.split(":")[1].startswith(READ_PREFIXES)
                 and a not in scoped], "*")
    created = [a for a in actions if a in CREATED_WITH_TAG]
    # aws:RequestTag is a key of the request: it holds for the VPC it is created in too.
    add("CreateOnlyTagged", created,
        [f"{EC2}:security-group/*", f"{EC2}:network-acl/*", f"{EC2}:route-table/*",
         f"{EC2}:vpc/*"],
        {"StringEquals": {"aws:RequestTag/cordon:managed": "true"}})
    add("ChangeOnlyManagedGroups", [a for a in actions if a in MANAGED_ONLY],
        f"{EC2}:security-group/*",
        {"StringEquals": {"aws:ResourceTag/cordon:managed": "true"}})
    if "ec2:CreateTags" in actions:
        add("TagWhatCordonCreates", ["ec2:CreateTags"],
            [f"{EC2}:security-group/*", f"{EC2}:network-acl/*", f"{EC2}:route-table/*",
             "arn:aws:ec2:*::snapshot/*", "arn:aws:ec2:*::image/*"],
            {"StringEquals": {"ec2:CreateAction": list(CREATE_ACTIONS)}})
        placed.discard("ec2:CreateTags")
    tagging = [a for a in actions if a in TAGGING]
    add("TagOnlyCordonKeys", tagging,
        [INSTANCE, "arn:aws:ec2:*::snapshot/*", "arn:aws:ec2:*::image/*"],
        {"ForAllValues:StringLike": {"aws:TagKeys": ["cordon:*"]}})
    for sid, acts, resources in SCOPES:
        add(sid, [a for a in actions if a in acts and a not in placed], list(resources))
    add("PassTheInstanceRoleBack", [a for a in actions if a == "iam:PassRole"],
        "arn:aws:iam::*:role/*",
        {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}})
    add("Contain", [a for a in actions if a not in placed], "*")
    if any(a.startswith("iam:") for a in actions):
        statements.append(self_protection([f"arn:aws:iam::*:role/{RESPONDER_ROLE}*"]))
    if "s3:PutBucketPolicy" in actions:
        statements.append(NEVER_THE_DATA)
    return {"Version": "2012-10-17", "Statement": statements}


# Cordon writes bucket policies and ACLs: it could write one that lets itself in. Its
# own policy denies it every object and listing action, which no bucket policy or ACL
# can override.
BUCKET_DATA = ("s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectAcl", "s3:PutObject",
               "s3:PutObjectAcl", "s3:DeleteObject", "s3:DeleteObjectVersion",
               "s3:ListBucket", "s3:ListBucketVersions", "s3:RestoreObject")
NEVER_THE_DATA = {"Sid": "NeverTheBucketsData", "Effect": "Deny", "Action": list(BUCKET_DATA),
                  "Resource": "*"}


def self_protection(own: list[Any]) -> dict[str, Any]:
    """The explicit deny that keeps Cordon from widening its own roles (`own`: their
    ARNs): no inline or managed policy, boundary, trust policy, tag or instance profile
    of theirs changes through Cordon, and none is passed to a service. A deny wins over
    every allow, including one someone adds later."""
    return {"Sid": "NeverItsOwnRoles", "Effect": "Deny", "Action": list(SELF_WRITES),
            "Resource": own}
