"""`python -m bot template`: the CloudFormation stack of the AWS side, validated by
cfn-lint (CloudFormation's own linter, with the resource schemas), and held to what
the intake and the role need."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


@functools.cache
def _printed(*args: str) -> str:
    """What `python -m bot template ARGS` prints, from the CLI's own entry point."""
    from bot.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["template", *args]) == 0
    return out.getvalue()


def template(*args: str) -> tuple[str, dict[str, Any]]:
    out = _printed(*args)
    return out, json.loads(out)


def test_the_command_prints_the_template() -> None:
    """The command a user runs (its own process) prints what the tests below check."""
    out = subprocess.run([sys.executable, "-m", "bot", "template", "--forwarding"], cwd=ROOT,
                         capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items()
                              if k != "CORDON_FINDINGS_PRODUCTS"}).stdout
    assert json.loads(out) == template("--forwarding")[1]


@pytest.mark.parametrize("args", [(), ("--member",), ("--forwarding",), ("--playbook", "isolate")])
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


PLACEHOLDERS = {"AWS::Partition": "aws", "AWS::AccountId": "111111111111",
                "AWS::StackName": "cordon", "AWS::Region": "eu-west-1",
                "MemberRoleName": "CordonResponder", "CentralRegion": "us-east-1",
                "CordonPrincipalArn": "arn:aws:iam::111111111111:role/cordon-task"}


def resolved(document: Any) -> Any:
    """A template's document with its intrinsics replaced by example values."""
    def hook(d: dict[str, Any]) -> Any:
        if set(d) == {"Fn::Sub"}:
            out = d["Fn::Sub"]
            for name, value in PLACEHOLDERS.items():
                out = out.replace("${" + name + "}", value)
            return out
        if set(d) == {"Ref"}:
            return PLACEHOLDERS.get(d["Ref"], d["Ref"])
        if set(d) == {"Fn::GetAtt"}:
            name = d["Fn::GetAtt"][0]
            if "Queue" in name:
                return f"arn:aws:sqs:eu-west-1:111111111111:cordon-{name}-1A2B3C"
            return f"arn:aws:iam::111111111111:role/cordon-{name}-1A2B3C"
        return d
    return json.loads(json.dumps(document), object_hook=hook)


def identity_policies(stack: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every identity policy of a stack: inline policies of its roles, managed policies."""
    out = {}
    for name, res in stack["Resources"].items():
        if res["Type"] == "AWS::IAM::Role":
            for p in res["Properties"].get("Policies", []):
                out[f"{name}/{p['PolicyName']}"] = p["PolicyDocument"]
        elif res["Type"] == "AWS::IAM::ManagedPolicy":
            out[name] = res["Properties"]["PolicyDocument"]
    return out


@pytest.mark.parametrize("args", [(), ("--member",), ("--forwarding",)])
def test_parliament_finds_nothing_in_any_policy_of_any_template(args: tuple[str, ...]) -> None:
    from tests.conftest import policy_findings

    _, stack = template(*args)
    policies = identity_policies(stack)
    assert policies
    for name, policy in policies.items():
        found = [issue for issue, _ in policy_findings(resolved(policy))]
        if name == "CordonBoundary":
            # A boundary caps actions (Resource "*"); the role's policy scopes resources.
            found = [f for f in found if f != "RESOURCE_STAR"]
        assert found == [], name


def test_the_role_holds_the_generated_policy_with_the_queue_narrowed() -> None:
    from playbooks.operations import iam_policy

    _, stack = template()
    role = stack["Resources"]["CordonResponderRole"]["Properties"]
    assert "RoleName" not in role  # named by CloudFormation: stacks never collide
    trust = role["AssumeRolePolicyDocument"]["Statement"][0]
    assert trust["Principal"] == {"AWS": {"Ref": "CordonPrincipalArn"}}
    assert trust["Action"] == ["sts:AssumeRole", "sts:SetSourceIdentity"]
    policy = role["Policies"][0]["PolicyDocument"]
    generated = iam_policy()
    assert [s["Sid"] for s in policy["Statement"]] == [s["Sid"] for s in generated["Statement"]]
    queue = next(s for s in policy["Statement"] if s["Sid"] == "FindingsQueue")
    assert queue["Resource"] == {"Fn::GetAtt": ["FindingsQueue", "Arn"]}
    # Every ARN names the partition the stack is deployed in (GovCloud, China).
    text = json.dumps(policy)
    assert '"arn:aws:' not in text and "arn:${AWS::Partition}:" in text
    # The rest is the generated policy.
    changed = {"FindingsQueue", "AssumeAccountRoles", "NeverItsOwnRoles"}
    plain = [s for s in resolved(policy)["Statement"] if s["Sid"] not in changed]
    assert plain == [s for s in generated["Statement"] if s["Sid"] not in changed]


def test_the_principal_that_reads_the_queue_may_read_it() -> None:
    """The consumer reads the queue with the credentials Cordon runs as: the queue's
    policy grants that principal (and Cordon's role) every action the intake declares."""
    from handlers.permissions import declared

    _, stack = template()
    statements = stack["Resources"]["FindingsQueuePolicy"]["Properties"]["PolicyDocument"][
        "Statement"]
    reads = next(s for s in statements if s["Sid"] == "CordonReads")
    assert {"Ref": "CordonPrincipalArn"} in reads["Principal"]["AWS"]
    assert {"Fn::GetAtt": ["CordonResponderRole", "Arn"]} in reads["Principal"]["AWS"]
    assert set(declared(["findings-intake"])["findings-intake"]) <= set(reads["Action"])
    assert reads["Resource"] == {"Fn::GetAtt": ["FindingsQueue", "Arn"]}


WRITES_TO_ITSELF = ("iam:PutRolePolicy", "iam:AttachRolePolicy", "iam:UpdateAssumeRolePolicy",
                    "iam:PassRole", "iam:AddRoleToInstanceProfile",
                    "iam:PutRolePermissionsBoundary", "iam:DeleteRolePermissionsBoundary")


@pytest.mark.parametrize("args", [(), ("--member",)])
def test_cordon_cannot_widen_its_own_roles(args: tuple[str, ...]) -> None:
    """An explicit deny of every IAM write on Cordon's own roles (a deny wins over any
    allow), in its policy and in the permissions boundary its role carries; the boundary
    allows no action the policy does not."""
    _, stack = template(*args)
    res = stack["Resources"]
    role = res["CordonResponderRole"]["Properties"]
    assert role["PermissionsBoundary"] == {"Ref": "CordonBoundary"}
    policy = resolved(role["Policies"][0]["PolicyDocument"])
    boundary = resolved(res["CordonBoundary"]["Properties"]["PolicyDocument"])
    own = ("arn:aws:iam::111111111111:role/CordonResponder" if args else
           "arn:aws:iam::111111111111:role/cordon-CordonResponderRole-1A2B3C")
    for document in (policy, boundary):
        (deny,) = [s for s in document["Statement"] if s.get("Sid") == "NeverItsOwnRoles"]
        assert set(WRITES_TO_ITSELF) <= set(deny["Action"])
        resources = deny["Resource"]
        assert any(_matches(pattern, own) for pattern in resources)
        assert PLACEHOLDERS["CordonPrincipalArn"] in resources
    allowed = {a for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    (bounded,) = [s for s in boundary["Statement"] if s["Effect"] == "Allow"]
    assert set(bounded["Action"]) == allowed
    # No bucket's objects either, whatever bucket policy Cordon writes.
    for document in (policy, boundary):
        (data,) = [s for s in document["Statement"] if s.get("Sid") == "NeverTheBucketsData"]
        assert data["Effect"] == "Deny" and {"s3:GetObject", "s3:PutObject"} <= set(
            data["Action"])


def _matches(pattern: str, arn: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(arn, pattern)


def test_cordon_assumes_only_the_member_role_and_passes_roles_only_to_ec2() -> None:
    _, stack = template()
    policy = resolved(stack["Resources"]["CordonResponderRole"]["Properties"]["Policies"][0][
        "PolicyDocument"])
    assume = next(s for s in policy["Statement"] if "sts:AssumeRole" in s["Action"])
    assert assume["Resource"] == "arn:aws:iam::*:role/CordonResponder"
    passing = [s for s in policy["Statement"]
               if "iam:PassRole" in s["Action"] and s["Effect"] == "Allow"]
    assert [s["Condition"] for s in passing] == [
        {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}]


def test_the_member_role_reads_no_queue_and_assumes_no_other_role() -> None:
    _, stack = template("--member")
    assert sorted(stack["Resources"]) == ["CordonBoundary", "CordonResponderRole"]
    role = stack["Resources"]["CordonResponderRole"]["Properties"]
    assert role["RoleName"] == {"Ref": "MemberRoleName"}
    policy = role["Policies"][0]["PolicyDocument"]
    actions = {a for s in policy["Statement"] if s["Effect"] == "Allow" for a in s["Action"]}
    assert not any(a.startswith("sqs:") for a in actions) and "sts:AssumeRole" not in actions
    assert "ec2:ModifyNetworkInterfaceAttribute" in actions


def test_the_forwarding_stack_sends_the_same_patterns_to_the_central_bus() -> None:
    _, central = template()
    _, forwarding = template("--forwarding")
    rules = {n: r["Properties"] for n, r in forwarding["Resources"].items()
             if r["Type"] == "AWS::Events::Rule"}
    assert {n: r["EventPattern"] for n, r in rules.items()} == {
        n: r["Properties"]["EventPattern"] for n, r in central["Resources"].items()
        if r["Type"] == "AWS::Events::Rule"}
    for rule in rules.values():
        (target,) = rule["Targets"]
        assert resolved(target["Arn"]) == "arn:aws:events:us-east-1:111111111111:event-bus/default"
        assert target["RoleArn"] == {"Fn::GetAtt": ["ForwardingRole", "Arn"]}
    role = forwarding["Resources"]["ForwardingRole"]["Properties"]
    assert "RoleName" not in role
    (statement,) = role["Policies"][0]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "events:PutEvents"
    assert "NotTheCentralRegion" in forwarding["Rules"]


def test_the_rules_filter_what_eventbridge_can() -> None:
    _, stack = template("--product", "GuardDuty", "--product", "Inspector")
    res = stack["Resources"]
    hub = res["SecurityHubFindingsRule"]["Properties"]["EventPattern"]["detail"]["findings"]
    assert hub["ProductName"] == ["GuardDuty", "Inspector"]
    assert hub["RecordState"] == ["ACTIVE"] and hub["Workflow"]["Status"] == ["NEW", "NOTIFIED"]
    gd = res["GuardDutyFindingsRule"]["Properties"]["EventPattern"]["detail"]
    assert gd["service"] == {"archived": [False]}


CHECKOV = ROOT / ".venv" / "checkov" / "bin" / "checkov"


def _checkov() -> dict[str, Any]:
    """checkov (from its own environment: its pins conflict with the tests') run once on
    every generated template and on one made worse (a queue unencrypted, its skip gone):
    its findings by template."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, args in (("central", ()), ("member", ("--member",)),
                           ("forwarding", ("--forwarding",))):
            (folder / f"{name}.json").write_text(template(*args)[0])
        _, worse = template()
        del worse["Resources"]["FindingsQueue"]["Properties"]["SqsManagedSseEnabled"]
        del worse["Resources"]["FindingsQueue"]["Metadata"]
        (folder / "worse.json").write_text(json.dumps(worse))
        out = subprocess.run([str(CHECKOV), "-d", str(folder), "--framework",
                              "cloudformation", "--skip-download", "--compact", "-o", "json"],
                             capture_output=True, text=True, timeout=300,
                             env={"PATH": "/usr/bin:/bin", "BC_SKIP_MAPPING": "TRUE",
                                  "HOME": str(folder)})
    report = json.loads(out.stdout)
    report = report[0] if isinstance(report, list) else report
    by_file: dict[str, Any] = {}
    for kind in ("failed_checks", "skipped_checks", "passed_checks"):
        for check in report["results"][kind]:
            name = Path(check["file_path"]).stem
            by_file.setdefault(name, {"failed_checks": [], "skipped_checks": [],
                                      "passed_checks": []})[kind].append(check)
    return by_file


def test_checkov_passes_every_template_each_skip_says_why_and_it_would_find_a_flaw() -> None:
    """One checkov run (a few seconds of CPU) for every template, and for the worse one:
    checkov is live, it fails an unencrypted queue."""
    from playbooks.template import CHECKOV_SKIPS

    results = _checkov()
    for name in ("central", "member", "forwarding"):
        found = results[name]
        assert [(c["check_id"], c["resource"]) for c in found["failed_checks"]] == [], name
        assert found["passed_checks"], name
        for skipped in found["skipped_checks"]:
            assert skipped["check_id"] in CHECKOV_SKIPS, name
            assert CHECKOV_SKIPS[skipped["check_id"]] in skipped["check_result"].get(
                "suppress_comment", ""), name
    assert ("CKV_AWS_27", "AWS::SQS::Queue.FindingsQueue") in [
        (c["check_id"], c["resource"]) for c in results["worse"]["failed_checks"]]
