"""The AWS side in one CloudFormation stack (`python -m bot template`), generated from
the declared permissions as `python -m bot policy` is: the CordonResponder role and its
trust policy, the findings queue with its dead-letter queue and its policy, and the
EventBridge rules that feed it (GuardDuty, Security Hub, the `cordon:contain` tag).
`--member` gives the role for the other accounts of an organisation (a StackSet).

What the template cannot show here: EventBridge rules see the findings of their own
region — deploy it in each region findings arise in (or in the Security Hub aggregation
region, with GuardDuty and Security Hub's delegated administrator as the account)."""

from __future__ import annotations

import copy
from typing import Any

from handlers.arns import rewrite_arns
from playbooks.findings import CONTAIN_TAG
from playbooks.operations import iam_policy

ROLE_NAME = "CordonResponder"
QUEUE_VISIBILITY = 120   # seconds: as the intake asks (handlers.findings_queue)
MAX_RECEIVE = 5          # deliveries before a message goes to the dead-letter queue
QUEUE_ACTIONS = {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility",
                 "sqs:GetQueueAttributes"}

RULES: dict[str, tuple[str, dict[str, Any]]] = {
    "GuardDutyFindingsRule": ("GuardDuty findings about an instance or an access key", {
        "source": ["aws.guardduty"], "detail-type": ["GuardDuty Finding"],
        "detail": {"resource": {"resourceType": ["Instance", "AccessKey"]}}}),
    "SecurityHubFindingsRule": ("New, active Security Hub findings about an instance or a key", {
        "source": ["aws.securityhub"], "detail-type": ["Security Hub Findings - Imported"],
        "detail": {"findings": {"Resources": {"Type": ["AwsEc2Instance", "AwsIamAccessKey"]},
                                "RecordState": ["ACTIVE"], "Workflow": {"Status": ["NEW"]}}}}),
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


def _policy(playbooks: list[str] | None, queue_arn: Any | None) -> dict[str, Any]:
    """The generated policy; the queue statement narrowed to this stack's queue — or, for
    a member account, dropped with the right to assume other roles."""
    policy = copy.deepcopy(iam_policy(playbooks))
    kept = []
    for statement in policy["Statement"]:
        actions = set(statement["Action"])
        if actions & QUEUE_ACTIONS:
            if queue_arn is None:
                continue
            statement["Resource"] = queue_arn
        if queue_arn is None and statement["Sid"] == "AssumeAccountRoles":
            continue  # a member account's role assumes no other
        kept.append(statement)
    policy["Statement"] = kept
    return _any_partition(policy)


def _any_partition(document: Any) -> Any:
    """Resources in the partition the stack is deployed in (`aws`, `aws-cn`, `aws-us-gov`):
    a policy naming `arn:aws:` grants nothing in GovCloud or China."""
    return rewrite_arns(document, lambda rest: {"Fn::Sub": f"arn:${{AWS::Partition}}:{rest}"})


def _principal(description: str) -> dict[str, Any]:
    return {"CordonPrincipalArn": {
        "Type": "String", "AllowedPattern": r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:.+$",
        "Description": description}}


def _role(description: str, policy: dict[str, Any]) -> dict[str, Any]:
    """The CordonResponder role: trusted by the principal parameter, holding `policy`."""
    return {"Type": "AWS::IAM::Role", "Properties": {
        "RoleName": ROLE_NAME, "Description": description, "MaxSessionDuration": 3600,
        "AssumeRolePolicyDocument": _trust({"Ref": "CordonPrincipalArn"}),
        "Policies": [{"PolicyName": "cordon", "PolicyDocument": policy}]}}


def central_template(playbooks: list[str] | None = None) -> dict[str, Any]:
    queue_arn = {"Fn::GetAtt": ["FindingsQueue", "Arn"]}
    resources: dict[str, Any] = {
        "FindingsDeadLetterQueue": {
            "Type": "AWS::SQS::Queue",
            "Properties": {"MessageRetentionPeriod": 1209600, "SqsManagedSseEnabled": True}},
        "FindingsQueue": {
            "Type": "AWS::SQS::Queue",
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
                "PolicyDocument": {"Version": "2012-10-17", "Statement": [{
                    "Sid": "EventBridgeRulesOnly", "Effect": "Allow",
                    "Principal": {"Service": "events.amazonaws.com"},
                    "Action": "sqs:SendMessage", "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": [
                        {"Fn::GetAtt": [name, "Arn"]} for name in RULES]}}}]}}},
        "CordonResponderRole": _role("Cordon: contains compromised instances and leaked "
                                     "keys, with approval", _policy(playbooks, queue_arn)),
    }
    for name, (description, pattern) in RULES.items():
        resources[name] = {
            "Type": "AWS::Events::Rule",
            "Properties": {"Description": f"Cordon: {description}", "State": "ENABLED",
                           "EventPattern": pattern,
                           "Targets": [{"Id": "cordon-findings", "Arn": queue_arn}]}}
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "Cordon: its responder role, and the alert intake (EventBridge rules "
                       "for GuardDuty, Security Hub and the cordon:contain tag, into an SQS "
                       "queue with a dead-letter queue)",
        "Parameters": _principal("The IAM principal Cordon runs as (its task, instance or "
                                 "user role), allowed to assume CordonResponder"),
        "Resources": resources,
        "Outputs": {
            "RoleArn": {"Description": "Cordon's role (AWS_ROLE_ARN, or the profile's role)",
                        "Value": {"Fn::GetAtt": ["CordonResponderRole", "Arn"]}},
            "FindingsQueueUrl": {"Description": "CORDON_FINDINGS_QUEUE_URL",
                                 "Value": {"Ref": "FindingsQueue"}},
            "DeadLetterQueueUrl": {"Description": "Messages delivered 5 times without being "
                                                  "handled",
                                   "Value": {"Ref": "FindingsDeadLetterQueue"}}},
    }


def member_template(playbooks: list[str] | None = None) -> dict[str, Any]:
    """The role Cordon assumes in each member account (CORDON_ACCOUNTS), for a StackSet."""
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "Cordon: the role it assumes in this account (deploy with a StackSet; "
                       "list it in CORDON_ACCOUNTS)",
        "Parameters": _principal("The principal Cordon runs as in its own account (e.g. "
                                 "the CordonResponder role of the central stack)"),
        "Resources": {"CordonResponderRole": _role(
            "Cordon, from its central account: contains compromised instances and leaked "
            "keys, with approval", _policy(playbooks, None))},
        "Outputs": {"RoleArn": {"Description": "This account's entry in CORDON_ACCOUNTS",
                                "Value": {"Fn::GetAtt": ["CordonResponderRole", "Arn"]}}},
    }
