"""AWS checks for `python -m bot preflight`: each account's role can be assumed, each
region answers, and — with EC2's DryRun — the permissions the playbooks need are
granted."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from handlers.attribution import acting_as
from handlers.aws import ClientPool, Clients
from handlers.fanout import parallel
from handlers.retry import describe_error


@dataclass(frozen=True)
class Check:
    ok: bool
    what: str
    detail: str


# Calls EC2 can authorise without a real resource; DryRunOperation means "granted".
DRY_RUNS: dict[str, Callable[[Any], Any]] = {
    "ec2:DescribeInstances": lambda ec2: ec2.describe_instances(DryRun=True, MaxResults=5),
    "ec2:DescribeSecurityGroups": lambda ec2: ec2.describe_security_groups(DryRun=True),
    "ec2:DescribeVpcs": lambda ec2: ec2.describe_vpcs(DryRun=True),
    "ec2:CreateSecurityGroup": lambda ec2: ec2.create_security_group(
        DryRun=True, GroupName="cordon-preflight", Description="Cordon preflight",
        TagSpecifications=[{"ResourceType": "security-group",
                            "Tags": [{"Key": "cordon:managed", "Value": "true"}]}]),
}


def _dry_run(clients: Clients, action: str) -> Check:
    try:
        DRY_RUNS[action](clients.ec2)
    except ClientError as exc:
        code = describe_error(exc).code
        if code == "DryRunOperation":
            return Check(True, action, "granted")
        if code in ("UnauthorizedOperation", "AccessDenied", "AccessDeniedException"):
            return Check(False, action, "not granted — deploy `python -m bot policy`")
        return Check(False, action, f"{code}: {describe_error(exc).message}")
    if action.split(":")[1].startswith("Describe"):
        return Check(True, action, "granted")  # it ran: read-only, no harm done
    return Check(False, action, "EC2 ran it instead of a dry run")


def check_place(clients: Clients, label: str) -> list[Check]:
    """One account and region: does it answer, and are the permissions there?"""
    try:
        identity = clients.sts.get_caller_identity()
    except Exception as exc:
        return [Check(False, label, f"does not answer: {describe_error(exc)} — check "
                                    "credentials, the region name, the network")]
    checks = [Check(True, label, f"answers as {identity.get('Arn')}")]
    results = parallel(lambda action: _dry_run(clients, action), list(DRY_RUNS))
    return checks + [Check(r.ok, f"{label} {r.what}", r.detail) for r in results]


def check_aws(pool: ClientPool, regions: list[str]) -> list[Check]:
    accounts: list[str | None] = list(pool.accounts) or [None]
    places = [(a, r) for a in accounts for r in regions]
    checks: list[Check] = []
    for account in dict.fromkeys(a for a, _ in places):
        if account is None:
            continue
        try:
            with acting_as("assume-role"):
                pool.for_region(regions[0], account, identity="cordon-preflight",
                                session_name="cordon-preflight")
            checks.append(Check(True, f"account {account}", "role assumed"))
        except Exception as exc:
            checks.append(Check(False, f"account {account}",
                                f"cannot assume {pool.accounts[account]}: {describe_error(exc)}"
                                " — check the role's trust policy"))
            places = [p for p in places if p[0] != account]

    def clients(place: tuple[str | None, str]) -> Clients:
        return pool.for_region(place[1], place[0], identity="cordon-preflight",
                               session_name="cordon-preflight")

    def one(place: tuple[str | None, str]) -> list[Check]:
        account, region = place
        label = f"{account}/{region}" if account else region
        with acting_as("preflight"):
            return check_place(clients(place), label)

    if places:
        # The service models load once here, not in every thread at the same time.
        first = clients(places[0])
        _ = first.sts, first.ec2
    for result in parallel(one, places):
        checks += result
    return checks


# Reading the EventBridge rules that feed the findings queue (preflight only).
RULE_PERMISSIONS = ("events:ListRules", "events:ListTargetsByRule")
RULE_PREFIX = "Cordon: "  # every rule `python -m bot template` makes is described so


def _rules_sending_to(clients: Clients, target_arn: str) -> tuple[int, int]:
    """(enabled, disabled) rules described as Cordon's whose targets include `target_arn`."""
    events = clients.client("events")
    enabled = disabled = 0
    for page in events.get_paginator("list_rules").paginate():
        for rule in page.get("Rules", []):
            if not str(rule.get("Description", "")).startswith(RULE_PREFIX):
                continue
            targets = events.list_targets_by_rule(Rule=rule["Name"]).get("Targets", [])
            if any(t.get("Arn") == target_arn for t in targets):
                if rule.get("State") == "ENABLED":
                    enabled += 1
                else:
                    disabled += 1
    return enabled, disabled


def check_rules(pool: ClientPool, queue_arn: str, regions: list[str], expected: int
                ) -> list[Check]:
    """The central stack's rules in the queue's region send to the queue; each other
    region's forwarding stack sends the same events to that region's default event bus
    (GuardDuty and Security Hub findings stay in the region they are found in)."""
    _, partition, _, central, account, _ = queue_arn.split(":", 5)
    bus = f"arn:{partition}:events:{central}:{account}:event-bus/default"

    def one(region: str) -> Check:
        where, target = (("the queue", queue_arn) if region == central else
                         (f"{central}'s event bus", bus))
        try:
            with acting_as("preflight"):
                enabled, disabled = _rules_sending_to(pool.for_region(region), target)
        except Exception as exc:
            return Check(False, f"rules {region}", f"not read: {describe_error(exc)}")
        fix = ("deploy the central stack (`make template`) here" if region == central else
               f"deploy the forwarding stack (`make template ARGS=--forwarding`) here, "
               f"CentralRegion={central}")
        said = f"{enabled} of Cordon's {expected} rules send findings to {where}"
        if disabled:
            said += f" ({disabled} more disabled)"
        return Check(enabled >= expected, f"rules {region}",
                     said if enabled >= expected else f"{said} — {fix}")

    return parallel(one, list(dict.fromkeys([central, *regions])))
