"""The AWS side as CloudFormation (`python -m bot template`), generated from the declared
permissions as `python -m bot policy` is:

- the central stack (deployed once, in the region Cordon reads its queue from): the
  findings queue with its dead-letter queue, a queue policy that lets only its rules send
  and lets the principal Cordon runs as read, the EventBridge rules (GuardDuty, Security
  Hub, the `cordon:contain` tag), and Cordon's role with its permissions boundary;
- `--forwarding`: per other region, the same rules sending to the central region's
  default event bus (EventBridge rules see only their own region's events, and GuardDuty
  does not aggregate across regions);
- `--member`: the role Cordon assumes in the other accounts of an organisation (a
  StackSet), under the same boundary.

The only IAM names are the member role's (a parameter: CORDON_ACCOUNTS names it); every
other name is left to CloudFormation, so stacks in several regions never collide.

What the tests cannot show: moto evaluates no policy, so the deny that keeps Cordon from
widening its own roles and the boundary are checked by reading them (parliament, checkov
and cfn-lint in the tests), not by AWS refusing a call."""

from __future__ import annotations

import copy
from typing import Any

from handlers.arns import rewrite_arns
from handlers.permissions import RESPONDER_ROLE
from playbooks.findings import CONTAIN_TAG
from playbooks.operations import iam_policy

QUEUE_VISIBILITY = 120   # seconds: as the intake asks (handlers.findings_queue)
MAX_RECEIVE = 5          # deliveries before a message goes to the dead-letter queue
QUEUE_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                 "sqs:GetQueueAttributes"}



def rules(products: tuple[str, ...] = ("GuardDuty",)) -> dict[str, tuple[str, dict[str, Any]]]:
    """The EventBridge rules, filtering all EventBridge can: GuardDuty findings not
    archived; Security Hub findings from `products`, active, new or notified. What it
    cannot (a finding about a contained resource, a repeat after a release) the intake
    filters."""
    return {
        "GuardDutyFindingsRule": ("GuardDuty findings about an instance, an access key or "
                                  "a bucket, not archived", {
            "source": ["aws.guardduty"], "detail-type": ["GuardDuty Finding"],
            "detail": {"resource": {"resourceType": ["Instance", "AccessKey", "S3Bucket"]},
                       "service": {"archived": [False]}}}),
        "SecurityHubFindingsRule": (f"Active Security Hub findings from {', '.join(products)} "
                                    "about an instance, a key, a user, a role or a bucket", {
            "source": ["aws.securityhub"], "detail-type": ["Security Hub Findings - Imported"],
            "detail": {"findings": {
                "ProductName": list(products),
                "Resources": {"Type": ["AwsEc2Instance", "AwsIamAccessKey", "AwsIamUser",
                                       "AwsIamRole", "AwsS3Bucket"]},
                "RecordState": ["ACTIVE"], "Workflow": {"Status": ["NEW", "NOTIFIED"]}}}}),
        "ContainTagRule": (f"The {CONTAIN_TAG} tag set on an EC2 instance", {
            "source": ["aws.tag"], "detail-type": ["Tag Change on Resource"],
            "detail": {"changed-tag-keys": [CONTAIN_TAG], "service": ["ec2"],
                       "resource-type": ["instance"]}}),
    }


def _trust(principal: dict[str, Any]) -> dict[str, Any]:
    """Who may act as Cordon: one principal; it names the approver as SourceIdentity."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "Cordon", "Effect": "Allow", "Principal": {"AWS": principal},
        "Action": ["sts:AssumeRole", "sts:SetSourceIdentity"]}]}


def _policy(playbooks: list[str] | None, queue_arn: Any | None, own: list[Any]
            ) -> dict[str, Any]:
    """The generated policy in the stack's partition: the queue statement narrowed to
    this stack's queue (for a member account: dropped, with the right to assume other
    roles); the role it may assume is the member role's name; the deny protects `own`."""
    policy = _any_partition(copy.deepcopy(iam_policy(playbooks)))
    kept = []
    for statement in policy["Statement"]:
        actions = set(statement["Action"])
        if actions & QUEUE_ACTIONS:
            if queue_arn is None:
                continue
            statement["Resource"] = queue_arn
        if statement["Sid"] == "AssumeAccountRoles":
            if queue_arn is None:
                continue  # a member account's role assumes no other
            statement["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:iam::*:role/"
                                                "${MemberRoleName}"}
        if statement["Sid"] == "NeverItsOwnRoles":
            statement["Resource"] = own
        kept.append(statement)
    policy["Statement"] = kept
    return policy


def _any_partition(document: Any) -> Any:
    """Resources in the partition the stack is deployed in (`aws`, `aws-cn`, `aws-us-gov`):
    a policy naming `arn:aws:` grants nothing in GovCloud or China."""
    return rewrite_arns(document, lambda rest: {"Fn::Sub": f"arn:${{AWS::Partition}}:{rest}"})


PRINCIPAL_PATTERN = r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:.+$"


def _parameters(principal: str) -> dict[str, Any]:
    return {
        "CordonPrincipalArn": {"Type": "String", "AllowedPattern": PRINCIPAL_PATTERN,
                               "Description": principal},
        "MemberRoleName": {
            "Type": "String", "Default": RESPONDER_ROLE, "AllowedPattern": r"^[\w+=,.@-]{1,64}$",
            "Description": "The name of the role Cordon assumes in member accounts (the "
                           "--member stack's RoleName); the only role Cordon may assume"}}


def _boundary(policy: dict[str, Any]) -> dict[str, Any]:
    """The permissions boundary of Cordon's role: no more than the actions its policy
    grants, and never a write to its own roles. Were a policy granting more attached to
    the role later, Cordon could still not use it."""
    allowed = sorted({a for st in policy["Statement"] if st["Effect"] == "Allow"
                      for a in st["Action"]})
    denies = [st for st in policy["Statement"] if st["Effect"] == "Deny"]
    return {"Type": "AWS::IAM::ManagedPolicy",
            "Metadata": _checkov("CKV_AWS_111", "CKV_AWS_109", "CKV_AWS_107"),
            "Properties": {
        "Description": "Cordon's permissions boundary: what its policy grants, no write "
                       "to its own roles, no bucket's data",
        "PolicyDocument": {"Version": "2012-10-17", "Statement": [
            {"Sid": "AtMostWhatCordonDeclares", "Effect": "Allow", "Action": allowed,
             "Resource": "*"},
            *denies]}}}


# checkov's IAM checks read any `Resource: *` write as unbounded; these are the
# justifications its skips carry in the template (each is kept in a resource's Metadata).
CHECKOV_SKIPS = {
    "CKV_AWS_111": "Containment writes (security groups, ACLs, keys, role policies) on "
                   "resources named only at incident time; creation is tag-conditioned and "
                   "Cordon's own roles are explicitly denied",
    "CKV_AWS_109": "Cordon writes deny-only revocation policies on the compromised role or "
                   "user; it is explicitly denied every write to its own roles and bounded",
    "CKV_AWS_110": "No privilege escalation: the NeverItsOwnRoles deny and the permissions "
                   "boundary stop every write to Cordon's own roles",
    "CKV_AWS_107": "Reads access-key metadata (ListAccessKeys, GetAccessKeyLastUsed) to "
                   "deactivate a leaked key; it never reads secrets",
    "CKV_AWS_108": "Read actions are the describes a containment plans with; no data-plane "
                   "read (S3, secrets) is granted",
    "CKV_AWS_27": "Encrypted with SSE-SQS (SqsManagedSseEnabled); EventBridge cannot send to "
                  "a queue under the AWS-managed KMS key alias/aws/sqs",
}


def _checkov(*ids: str) -> dict[str, Any]:
    return {"checkov": {"skip": [{"id": i, "comment": CHECKOV_SKIPS[i]} for i in ids]}}


def _role(description: str, policy: dict[str, Any], name: Any | None = None) -> dict[str, Any]:
    """Cordon's role: trusted by the principal parameter, holding `policy`, under the
    boundary; named `name` or by CloudFormation."""
    props: dict[str, Any] = {
        "Description": description, "MaxSessionDuration": 3600,
        "AssumeRolePolicyDocument": _trust({"Ref": "CordonPrincipalArn"}),
        "PermissionsBoundary": {"Ref": "CordonBoundary"},
        "Policies": [{"PolicyName": "cordon", "PolicyDocument": policy}]}
    if name is not None:
        props["RoleName"] = name
    return {"Type": "AWS::IAM::Role", "Properties": props,
            "Metadata": _checkov("CKV_AWS_111", "CKV_AWS_109", "CKV_AWS_110", "CKV_AWS_107",
                                 "CKV_AWS_108")}


def _rule_resources(products: tuple[str, ...], target: dict[str, Any]) -> dict[str, Any]:
    return {name: {"Type": "AWS::Events::Rule", "Properties": {
        "Description": f"Cordon: {description}", "State": "ENABLED", "EventPattern": pattern,
        "Targets": [target]}} for name, (description, pattern) in rules(products).items()}


def central_template(playbooks: list[str] | None = None,
                     products: tuple[str, ...] = ("GuardDuty",)) -> dict[str, Any]:
    queue_arn = {"Fn::GetAtt": ["FindingsQueue", "Arn"]}
    own = [{"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${AWS::StackName}-*"},
           {"Fn::Sub": "arn:${AWS::Partition}:iam::*:role/${MemberRoleName}"},
           {"Ref": "CordonPrincipalArn"}]
    policy = _policy(playbooks, queue_arn, own)
    resources: dict[str, Any] = {
        "FindingsDeadLetterQueue": {
            "Type": "AWS::SQS::Queue", "Metadata": _checkov("CKV_AWS_27"),
            "Properties": {"MessageRetentionPeriod": 1209600, "SqsManagedSseEnabled": True}},
        "FindingsQueue": {
            "Type": "AWS::SQS::Queue", "Metadata": _checkov("CKV_AWS_27"),
            "Properties": {
                "VisibilityTimeout": QUEUE_VISIBILITY, "MessageRetentionPeriod": 345600,
                "ReceiveMessageWaitTimeSeconds": 20, "SqsManagedSseEnabled": True,
                "RedrivePolicy": {
                    "deadLetterTargetArn": {"Fn::GetAtt": ["FindingsDeadLetterQueue", "Arn"]},
                    "maxReceiveCount": MAX_RECEIVE}}},
        "FindingsQueuePolicy": {
            "Type": "AWS::SQS::QueuePolicy",
            "Properties": {
                "Queues": [{"Ref": "FindingsQueue"}],
                "PolicyDocument": {"Version": "2012-10-17", "Statement": [
                    {"Sid": "EventBridgeRulesOnly", "Effect": "Allow",
                     "Principal": {"Service": "events.amazonaws.com"},
                     "Action": "sqs:SendMessage", "Resource": queue_arn,
                     "Condition": {"ArnEquals": {"aws:SourceArn": [
                         {"Fn::GetAtt": [name, "Arn"]} for name in rules(products)]}}},
                    # The consumer reads with the credentials Cordon runs as (its task,
                    # instance or user role), and with its role where it runs as that.
                    {"Sid": "CordonReads", "Effect": "Allow",
                     "Principal": {"AWS": [{"Ref": "CordonPrincipalArn"},
                                           {"Fn::GetAtt": ["CordonResponderRole", "Arn"]}]},
                     "Action": sorted(QUEUE_ACTIONS), "Resource": queue_arn}]}}},
        "CordonBoundary": _boundary(policy),
        "CordonResponderRole": _role("Cordon: contains compromised instances and leaked "
                                     "keys, with approval", policy),
        **_rule_resources(products, {"Id": "cordon-findings", "Arn": queue_arn}),
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "Cordon, central: its role, and the alert intake (EventBridge rules "
                       "for GuardDuty, Security Hub and the cordon:contain tag, into an SQS "
                       "queue with a dead-letter queue). Deploy once; --forwarding stacks "
                       "bring the other regions' findings here",
        "Parameters": _parameters("The IAM principal Cordon runs as (its task, instance or "
                                  "user role): it reads the queue and may assume the role"),
        "Resources": resources,
        "Outputs": {
            "RoleArn": {"Description": "Cordon's role (AWS_ROLE_ARN, or the profile's role)",
                        "Value": {"Fn::GetAtt": ["CordonResponderRole", "Arn"]}},
            "FindingsQueueUrl": {"Description": "CORDON_FINDINGS_QUEUE_URL",
                                 "Value": {"Ref": "FindingsQueue"}},
            "DeadLetterQueueUrl": {"Description": "Messages delivered 5 times without being "
                                                  "handled",
                                   "Value": {"Ref": "FindingsDeadLetterQueue"}},
            "CentralRegion": {"Description": "The --forwarding stacks' CentralRegion",
                              "Value": {"Ref": "AWS::Region"}}},
    }


def forwarding_template(products: tuple[str, ...] = ("GuardDuty",)) -> dict[str, Any]:
    """Per region other than the central one: the same rules, sending to the central
    region's default event bus (a role lets EventBridge put the events there)."""
    bus = {"Fn::Sub": "arn:${AWS::Partition}:events:${CentralRegion}:${AWS::AccountId}:"
                      "event-bus/default"}
    resources: dict[str, Any] = {
        "ForwardingRole": {"Type": "AWS::IAM::Role", "Properties": {
            "Description": "Cordon: EventBridge forwards findings to the central region",
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
            }]},
            "Policies": [{"PolicyName": "forward", "PolicyDocument": {
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Allow", "Action": "events:PutEvents", "Resource": bus}]}}]}},
        **_rule_resources(products, {"Id": "cordon-central", "Arn": bus,
                                     "RoleArn": {"Fn::GetAtt": ["ForwardingRole", "Arn"]}}),
    }
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "Cordon, forwarding: this region's GuardDuty, Security Hub and "
                       "cordon:contain events to the central region's event bus",
        "Parameters": {"CentralRegion": {
            "Type": "String", "AllowedPattern": r"^[a-z]{2}(-[a-z]+)+-\d$",
            "Description": "The region of the central stack (its CentralRegion output)"}},
        "Rules": {"NotTheCentralRegion": {"Assertions": [{
            "Assert": {"Fn::Not": [{"Fn::Equals": [{"Ref": "CentralRegion"},
                                                   {"Ref": "AWS::Region"}]}]},
            "AssertDescription": "the central region has the central stack's rules; deploy "
                                 "this stack in the other regions"}]}},
        "Resources": resources,
    }


def member_template(playbooks: list[str] | None = None) -> dict[str, Any]:
    """The role Cordon assumes in each member account (CORDON_ACCOUNTS), for a StackSet."""
    own = [{"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:role/${MemberRoleName}"},
           {"Ref": "CordonPrincipalArn"}]
    policy = _policy(playbooks, None, own)
    parameters = _parameters("The principal Cordon runs as in its own account (e.g. the "
                             "central stack's RoleArn output)")
    parameters["MemberRoleName"]["Description"] = (
        "This role's name (IAM names are global: deploy one instance per account)")
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "Cordon: the role it assumes in this account (deploy with a StackSet, "
                       "one region per account; list it in CORDON_ACCOUNTS)",
        "Parameters": parameters,
        "Resources": {
            "CordonBoundary": _boundary(policy),
            "CordonResponderRole": _role(
                "Cordon, from its central account: contains compromised instances and "
                "leaked keys, with approval", policy, {"Ref": "MemberRoleName"})},
        "Outputs": {"RoleArn": {"Description": "This account's entry in CORDON_ACCOUNTS",
                                "Value": {"Fn::GetAtt": ["CordonResponderRole", "Arn"]}}},
    }

