"""isolate-security-groups against moto's server. moto does not model connection
tracking: these tests assert on the groups each ENI is on, in which order it was
moved, and the rules of the isolation groups."""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from handlers.attribution import acting_as
from handlers.aws import ClientPool
from handlers.base import StepContext, StepFailed, Target
from handlers.ec2_lookup import find_instance
from handlers.isolation import CONNTRACK_MINIMUM, find_group_pair, prepare_vpcs
from handlers.registry import get_action
from sandbox import world as sandbox_world
from tests.conftest import AwsTrace, aws_client


@functools.cache
def ec2() -> Any:
    return aws_client("ec2")


def context(pool: ClientPool, world: sandbox_world.World, instance_id: str | None = None,
            incident: str = "CRD-TEST01") -> StepContext:
    instance_id = instance_id or world.instance_id
    with acting_as("lookup-instance"):
        facts = find_instance(pool.for_region, instance_id, ["us-east-1"])
    target = Target("instance", instance_id, "us-east-1", None, incident, facts)
    return StepContext(target=target, clients=pool.for_region("us-east-1"))


def isolate(ctx: StepContext) -> tuple[dict[str, Any], Any]:
    action = get_action("isolate-security-groups")
    with acting_as(action.name):
        captured = action.capture(ctx)
        outcome = action.apply(ctx, captured)
        action.verify(ctx, captured, outcome)
    return captured, outcome


def eni_groups(instance_id: str) -> dict[str, list[str]]:
    inst = ec2().describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return {e["NetworkInterfaceId"]: [g["GroupId"] for g in e["Groups"]]
            for e in inst["NetworkInterfaces"]}


def isolation_groups(vpc_id: str) -> list[dict[str, Any]]:
    return [g for g in ec2().describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])["SecurityGroups"]
        if g["GroupName"].startswith("cordon-")]


def test_every_eni_ends_on_the_sealed_group_only(pool: ClientPool, world: sandbox_world.World
                                                 ) -> None:
    before = eni_groups(world.instance_id)
    assert len(before) == 2 and all(before.values())
    captured, outcome = isolate(context(pool, world))
    sealed = outcome.details["sealed_group"]
    assert eni_groups(world.instance_id) == {eni: [sealed] for eni in before}
    # The prior state is every ENI's own groups, as they were.
    assert {e["id"]: [g["id"] for g in e["groups"]] for e in captured["enis"]} == before
    # The bystander in the same subnet keeps its groups.
    assert list(eni_groups(world.bystander_id).values()) == [[world.web_group]]


def test_isolation_groups_are_tagged_and_have_the_right_rules(
        pool: ClientPool, world: sandbox_world.World) -> None:
    isolate(context(pool, world))
    groups = {g["GroupName"]: g for g in isolation_groups(world.vpc_id)}
    assert set(groups) == {"cordon-open", "cordon-sealed"}
    for name, role in (("cordon-open", "isolation-open"), ("cordon-sealed", "isolation-sealed")):
        tags = {t["Key"]: t["Value"] for t in groups[name]["Tags"]}
        assert tags["cordon:role"] == role and tags["cordon:managed"] == "true"
    sealed, opened = groups["cordon-sealed"], groups["cordon-open"]
    assert sealed["IpPermissions"] == [] and sealed["IpPermissionsEgress"] == []
    for perms in (opened["IpPermissions"], opened["IpPermissionsEgress"]):
        assert any(p["IpProtocol"] == "-1" and {"CidrIp": "0.0.0.0/0"} in p["IpRanges"]
                   for p in perms)
        assert any(p["IpProtocol"] == "-1" and {"CidrIpv6": "::/0"} in p.get("Ipv6Ranges", [])
                   for p in perms)


def test_each_eni_goes_through_the_open_group_before_the_sealed_one(
        local_aws: Any, world: sandbox_world.World, aws_trace: AwsTrace) -> None:
    pool = ClientPool(aws_trace.session)
    _, outcome = isolate(context(pool, world))
    moves = [(p["NetworkInterfaceId"], p["Groups"][0]) for op, p in aws_trace.calls
             if op == "ModifyNetworkInterfaceAttribute" and "Groups" in p]
    open_id, sealed_id = outcome.details["open_group"], outcome.details["sealed_group"]
    for eni in eni_groups(world.instance_id):
        assert [g for e, g in moves if e == eni] == [open_id, sealed_id]
    # Connection-tracking timeouts lowered to the minimum on every ENI.
    lowered = [p for op, p in aws_trace.calls if op == "ModifyNetworkInterfaceAttribute"
               and p.get("ConnectionTrackingSpecification") == CONNTRACK_MINIMUM]
    assert len(lowered) == 2
    # Never the instance-level attribute, which fails on multi-ENI instances.
    assert aws_trace.count("ModifyInstanceAttribute") == 0


def test_groups_are_reused_not_duplicated(pool: ClientPool, world: sandbox_world.World,
                                          aws_trace: AwsTrace) -> None:
    isolate(context(pool, world))
    _, outcome = isolate(context(pool, world, world.bystander_id, incident="CRD-TEST02"))
    assert outcome.details["created_groups"] == []
    assert len(isolation_groups(world.vpc_id)) == 2
    assert aws_trace.count("CreateSecurityGroup") == 2


def test_two_containments_in_one_vpc_at_once_create_one_pair(
        pool: ClientPool, world: sandbox_world.World) -> None:
    contexts = [context(pool, world), context(pool, world, world.bystander_id, "CRD-TEST02")]
    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(isolate, contexts))
    assert len(isolation_groups(world.vpc_id)) == 2
    sealed = {outcome.details["sealed_group"] for _, outcome in results}
    assert len(sealed) == 1
    for instance in (world.instance_id, world.bystander_id):
        assert all(g == list(sealed) for g in eni_groups(instance).values())


def test_a_sealed_group_someone_added_a_rule_to_is_emptied(
        pool: ClientPool, world: sandbox_world.World) -> None:
    with acting_as("prepare"):
        prepare_vpcs(pool.for_region("us-east-1"), [world.vpc_id])
        pair = find_group_pair(pool.for_region("us-east-1"), world.vpc_id)
    sealed = pair["isolation-sealed"]["GroupId"]
    ec2().authorize_security_group_ingress(GroupId=sealed, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
         "IpRanges": [{"CidrIp": "198.51.100.0/24"}]}])
    isolate(context(pool, world))
    assert sandbox_world.group_rules(sealed) == ([], [])


def test_verify_fails_when_an_eni_is_not_sealed(pool: ClientPool, world: sandbox_world.World
                                                ) -> None:
    ctx = context(pool, world)
    action = get_action("isolate-security-groups")
    with acting_as(action.name):
        captured = action.capture(ctx)
        outcome = action.apply(ctx, captured)
    ec2().modify_network_interface_attribute(NetworkInterfaceId=world.second_eni,
                                             Groups=[world.web_group])
    try:
        with acting_as(action.name):
            action.verify(ctx, captured, outcome)
    except StepFailed as exc:
        assert exc.code == "VerificationFailed"
        assert world.second_eni in exc.message
    else:
        raise AssertionError("verify accepted an ENI that is not on the sealed group")


def test_check_says_done_once_isolated(pool: ClientPool, world: sandbox_world.World) -> None:
    action = get_action("isolate-security-groups")
    with acting_as(action.name):
        assert action.check(context(pool, world)) is False
        isolate(context(pool, world))
        assert action.check(context(pool, world)) is True


def test_undo_puts_every_eni_back_on_its_own_groups(pool: ClientPool,
                                                    world: sandbox_world.World) -> None:
    before = eni_groups(world.instance_id)
    ctx = context(pool, world)
    captured, _ = isolate(ctx)
    with acting_as("isolate-security-groups"):
        get_action("isolate-security-groups").undo(ctx, captured)
    assert eni_groups(world.instance_id) == before


def test_prepare_creates_the_pair_once(pool: ClientPool, world: sandbox_world.World) -> None:
    with acting_as("prepare"):
        first = prepare_vpcs(pool.for_region("us-east-1"), [world.vpc_id])
        second = prepare_vpcs(pool.for_region("us-east-1"), [world.vpc_id])
    assert len(first[0]["created"]) == 2 and second[0]["created"] == []
    assert (first[0]["open"], first[0]["sealed"]) == (second[0]["open"], second[0]["sealed"])


def test_groups_created_by_another_replica_meanwhile_are_adopted(
        pool: ClientPool, world: sandbox_world.World) -> None:
    """Another process created the pair after this one looked: creation answers
    InvalidGroup.Duplicate, and the existing groups are used and their rules checked."""
    from handlers.isolation import OPEN, SEALED, ensure_group_pair

    clients = pool.for_region("us-east-1")
    # The other replica got as far as creating the groups, not their rules.
    for name in ("cordon-open", "cordon-sealed"):
        role = "isolation-open" if name == "cordon-open" else "isolation-sealed"
        ec2().create_security_group(
            GroupName=name, Description="other replica", VpcId=world.vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": [
                {"Key": "cordon:managed", "Value": "true"},
                {"Key": "cordon:role", "Value": role}]}])
    with acting_as("prepare"):
        ids, created = ensure_group_pair(clients, world.vpc_id, known={})
    assert created == []
    assert len(isolation_groups(world.vpc_id)) == 2
    assert sandbox_world.group_rules(ids[SEALED]) == ([], [])
    ingress, egress = sandbox_world.group_rules(ids[OPEN])
    assert ingress and egress
