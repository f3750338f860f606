"""`python -m bot template`: the CloudFormation stack of the AWS side, validated by
cfn-lint (CloudFormation's own linter, with the resource schemas), and held to what
the intake and the role need."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def template(*args: str) -> tuple[str, dict[str, Any]]:
    out = subprocess.run([sys.executable, "-m", "bot", "template", *args], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return out, json.loads(out)


@pytest.mark.parametrize("args", [(), ("--member",), ("--playbook", "isolate")])
def test_cfn_lint_finds_nothing(args: tuple[str, ...]) -> None:
    import cfnlint.api

    text, _ = template(*args)
    matches = cfnlint.api.lint(text, regions=["us-east-1", "eu-west-1"])
    assert [(m.rule.id, m.message) for m in matches] == []


def test_cfn_lint_would_find_a_broken_template() -> None:
    """The linter is live: a queue whose visibility is not a number is caught."""
    import cfnlint.api

    _, stack = template()
    stack["Resources"]["FindingsQueue"]["Properties"]["VisibilityTimeout"] = "soon"
    assert any(m.rule.id.startswith("E") for m in cfnlint.api.lint(json.dumps(stack)))


def test_the_central_stack_feeds_the_queue_from_three_rules_only() -> None:
    from handlers.findings_queue import VISIBILITY_SECONDS

    _, stack = template()
    res = stack["Resources"]
    rules = {n: r for n, r in res.items() if r["Type"] == "AWS::Events::Rule"}
    sources = sorted(r["Properties"]["EventPattern"]["source"][0] for r in rules.values())
    assert sources == ["aws.guardduty", "aws.securityhub", "aws.tag"]
    tag = next(r for r in rules.values()
               if r["Properties"]["EventPattern"]["source"] == ["aws.tag"])
    assert tag["Properties"]["EventPattern"]["detail"]["changed-tag-keys"] == ["cordon:contain"]
    assert all(r["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": ["FindingsQueue", "Arn"]}
               for r in rules.values())
    queue = res["FindingsQueue"]["Properties"]
    assert queue["VisibilityTimeout"] == VISIBILITY_SECONDS
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 5
    statement = res["FindingsQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"][0]
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == [
        {"Fn::GetAtt": [n, "Arn"]} for n in rules]
    assert set(stack["Outputs"]) >= {"RoleArn", "FindingsQueueUrl", "DeadLetterQueueUrl"}


def test_the_role_holds_the_generated_policy_with_the_queue_narrowed() -> None:
    from parliament import analyze_policy_string

    from playbooks.operations import iam_policy

    _, stack = template()
    role = stack["Resources"]["CordonResponderRole"]["Properties"]
    trust = role["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"AWS": {"Ref": "CordonPrincipalArn"}}
    assert trust["Action"] == ["sts:AssumeRole", "sts:SetSourceIdentity"]
    policy = role["Policies"][0]["PolicyDocument"]
    generated = iam_policy()
    assert [s["Sid"] for s in policy["Statement"]] == [s["Sid"] for s in generated["Statement"]]
    queue = next(s for s in policy["Statement"] if s["Sid"] == "FindingsQueue")
    assert queue["Resource"] == {"Fn::GetAtt": ["FindingsQueue", "Arn"]}
    assert "sqs:ReceiveMessage" in queue["Action"]
    # Every ARN names the partition the stack is deployed in (GovCloud, China).
    text = json.dumps(policy)
    assert '"arn:aws:' not in text and "arn:${AWS::Partition}:" in text
    # The rest, as generated (in the `aws` partition): parliament finds nothing in it.
    plain = {**policy, "Statement": [s for s in policy["Statement"]
                                     if s["Sid"] != "FindingsQueue"]}
    resolved = json.loads(json.dumps(plain), object_hook=lambda d: d["Fn::Sub"].replace(
        "${AWS::Partition}", "aws") if set(d) == {"Fn::Sub"} else d)
    assert resolved == {**plain, "Statement": [s for s in generated["Statement"]
                                               if s["Sid"] != "FindingsQueue"]}
    assert analyze_policy_string(json.dumps(resolved)).findings == []


def test_the_member_role_reads_no_queue_and_assumes_no_other_role() -> None:
    _, stack = template("--member")
    assert list(stack["Resources"]) == ["CordonResponderRole"]
    policy = stack["Resources"]["CordonResponderRole"]["Properties"]["Policies"][0][
        "PolicyDocument"]
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert not any(a.startswith("sqs:") for a in actions) and "sts:AssumeRole" not in actions
    assert "ec2:ModifyNetworkInterfaceAttribute" in actions
