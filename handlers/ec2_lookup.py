"""Find an instance across regions and describe what a responder needs to see."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from botocore.exceptions import ClientError

from handlers.autoscaling import FLEET_PERMISSIONS, fleet_facts, membership
from handlers.aws import Clients
from handlers.fanout import both, parallel
from handlers.retry import AwsError, describe_error
from handlers.tracked_flows import LOOK_PERMISSIONS, carrying_subnets

# What finding an instance and drawing its approval card calls.
PERMISSIONS = ("ec2:DescribeInstances", "autoscaling:DescribeAutoScalingInstances",
               "ec2:DescribeRouteTables", *FLEET_PERMISSIONS, *LOOK_PERMISSIONS)
NOT_FOUND_CODES = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}


class TargetNotFound(Exception):
    def __init__(self, resource_id: str, searched: Sequence[str], errors: dict[str, AwsError]):
        self.resource_id = resource_id
        self.searched = list(searched)
        self.errors = errors
        super().__init__(f"{resource_id} not found in {', '.join(searched)}")


def interfaces(instance: dict[str, Any]) -> list[dict[str, Any]]:
    """The instance's ENIs by device index, each with its groups and conntrack settings:
    what the card shows and what the cut records before it changes anything."""
    return [
        {
            "id": eni["NetworkInterfaceId"],
            "private_ip": eni.get("PrivateIpAddress", ""),
            "addresses": [a["PrivateIpAddress"] for a in eni.get("PrivateIpAddresses", [])
                          if a.get("PrivateIpAddress")],
            "ipv6": [a["Ipv6Address"] for a in eni.get("Ipv6Addresses", [])
                     if a.get("Ipv6Address")],
            "device_index": eni.get("Attachment", {}).get("DeviceIndex", 0),
            "subnet_id": eni.get("SubnetId", ""),
            "groups": [{"id": g["GroupId"], "name": g.get("GroupName", "")}
                       for g in eni.get("Groups", [])],
            "conntrack": eni.get("ConnectionTrackingConfiguration") or {},
        }
        for eni in sorted(instance.get("NetworkInterfaces", []),
                          key=lambda e: e.get("Attachment", {}).get("DeviceIndex", 0))
    ]


def off_group(instance: dict[str, Any], group_id: str) -> list[str]:
    """The ENIs that are not on `group_id` alone ("eni-… on sg-a,sg-b"); [] when every
    one is (and there is at least one)."""
    enis = instance.get("NetworkInterfaces", [])
    if not enis:
        return ["no network interface"]
    wrong = []
    for eni in enis:
        got = [g["GroupId"] for g in eni.get("Groups", [])]
        if got != [group_id]:
            wrong.append(f"{eni['NetworkInterfaceId']} is on {','.join(got) or 'nothing'}")
    return wrong


def instance_facts(instance: dict[str, Any], account: str, region: str) -> dict[str, Any]:
    tags = {t["Key"]: t["Value"] for t in instance.get("Tags", [])}
    enis = interfaces(instance)
    profile = instance.get("IamInstanceProfile") or {}
    launch = instance.get("LaunchTime")
    return {
        "instance_id": instance["InstanceId"],
        "name": tags.get("Name", ""),
        "state": instance.get("State", {}).get("Name", "unknown"),
        "type": instance.get("InstanceType", ""),
        "lifecycle": instance.get("InstanceLifecycle") or "on-demand",
        "account": account,
        "region": region,
        "vpc_id": instance.get("VpcId", ""),
        "subnet_id": instance.get("SubnetId", ""),
        "private_ip": instance.get("PrivateIpAddress", ""),
        "enis": enis,
        "instance_profile": profile.get("Arn"),
        "launch_time": str(launch.isoformat()) if launch is not None and hasattr(
            launch, "isoformat") else str(launch or ""),
        "tags": tags,
        "asg": tags.get("aws:autoscaling:groupName"),
    }


def describe_instance(clients: Clients, instance_id: str) -> dict[str, Any] | None:
    """One instance with its reservation's account, or None when it is not in this region."""
    try:
        resp = clients.ec2.describe_instances(InstanceIds=[instance_id])
    except ClientError as exc:
        if describe_error(exc).code in NOT_FOUND_CODES:
            return None
        raise
    for reservation in resp.get("Reservations", []):
        for inst in reservation.get("Instances", []):
            if inst["InstanceId"] == instance_id:
                inst = dict(inst)
                inst["_OwnerId"] = reservation.get("OwnerId", "")
                return inst
    return None


# Where to look: (account name or None for Cordon's own account, region).
Location = tuple[str | None, str]


class AmbiguousTarget(Exception):
    def __init__(self, resource_id: str, places: list[Location]) -> None:
        self.resource_id = resource_id
        self.places = places
        super().__init__(f"{resource_id} found in {len(places)} places")


def find_instance(
    clients_for: Callable[[Location], Clients], instance_id: str, locations: Sequence[Location]
) -> dict[str, Any]:
    """Look the instance up in every account and region at once; its Auto Scaling group
    in the same round trip when only one place is searched."""
    if len(locations) == 1:
        clients = clients_for(locations[0])
        inst, asg = both(
            lambda: describe_instance(clients, instance_id),
            lambda: _asg_of(clients, instance_id),
        )
        if inst is None:
            raise TargetNotFound(instance_id, [_where(locations[0])], {})
        facts = instance_facts(inst, inst["_OwnerId"], locations[0][1])
        facts["account_name"] = locations[0][0]
        return _with_fleet(clients, _with_group(facts, asg))

    def one(place: Location) -> tuple[Location, dict[str, Any] | None, AwsError | None]:
        try:
            return place, describe_instance(clients_for(place), instance_id), None
        except Exception as exc:  # a place that fails must not hide the others
            return place, None, describe_error(exc)

    results = parallel(one, locations)
    found = [(place, inst) for place, inst, _ in results if inst is not None]
    errors = {_where(place): err for place, _, err in results if err is not None}
    if not found:
        raise TargetNotFound(instance_id, [_where(p) for p in locations], errors)
    if len(found) > 1:
        raise AmbiguousTarget(instance_id, [place for place, _ in found])
    place, inst = found[0]
    facts = instance_facts(inst, inst["_OwnerId"], place[1])
    facts["account_name"] = place[0]
    return _with_fleet(clients_for(place), _with_group(facts, _asg_of(clients_for(place),
                                                                      instance_id)))


def _with_group(facts: dict[str, Any], member: dict[str, Any] | None) -> dict[str, Any]:
    """Its Auto Scaling group and lifecycle state as read now (the state is unknown when
    only its aws:autoscaling:groupName tag names the group)."""
    if member:
        facts["asg"], facts["asg_state"] = member["name"], member["state"]
    return facts


def _with_fleet(clients: Clients, facts: dict[str, Any]) -> dict[str, Any]:
    """Its load balancers, found now so that the containment need not search for them,
    and the ways out of its subnet. A failure here does not block the card; the card
    says so."""
    def fleet() -> None:
        try:
            facts.update(fleet_facts(clients, facts["instance_id"], facts.get("asg")))
        except Exception as exc:
            facts.update(target_groups=[], classic_elbs=[],
                         fleet_error=describe_error(exc).code)

    def exits() -> None:
        try:
            facts["subnet_exits"] = subnet_exits(clients, facts.get("vpc_id", ""),
                                                 facts.get("subnet_id", ""))
        except Exception:
            facts["subnet_exits"] = []

    parallel(lambda job: job(), [fleet, exits])
    try:
        facts["tracked_paths"] = carrying_subnets(clients, facts)
    except Exception as exc:
        facts["tracked_paths"] = None  # unknown: the cut looks again after the click
        facts["tracked_paths_error"] = describe_error(exc).code
    facts["untracked_limits"] = uncuttable(facts)
    return facts


def subnet_exits(clients: Clients, vpc_id: str, subnet_id: str) -> list[dict[str, str]]:
    """Default routes of the instance's subnet (its own route table, or the main one):
    [{"kind": "nat" | "tgw" | "igw" | …, "id": …}]."""
    if not vpc_id:
        return []
    tables = clients.ec2.describe_route_tables(Filters=[
        {"Name": "vpc-id", "Values": [vpc_id]}])["RouteTables"]
    own = next((t for t in tables for a in t.get("Associations", [])
                if a.get("SubnetId") == subnet_id), None)
    table = own or next((t for t in tables for a in t.get("Associations", [])
                         if a.get("Main")), None)
    found = []
    for route in (table or {}).get("Routes", []):
        if (route.get("DestinationCidrBlock") or route.get("DestinationIpv6CidrBlock")) not in (
                "0.0.0.0/0", "::/0"):
            continue
        for key, kind in (("NatGatewayId", "nat"), ("TransitGatewayId", "tgw"),
                          ("VpcPeeringConnectionId", "peering"), ("GatewayId", "gateway")):
            if route.get(key):
                found.append({"kind": kind, "id": str(route[key])})
                break
    return found


def uncuttable(facts: dict[str, Any]) -> list[str]:
    """What a security-group cut does not end at once for this instance: flows that stay
    tracked whatever the groups say (`isolate` and `full` end those through another subnet
    with network ACL entries for the instance's own addresses: sever-tracked-flows), and
    what no security group or NACL filters. Said on the card and in the thread."""
    notes = ["ICMP flows stay tracked"]
    acl = ("; `isolate`/`full` cut them with ACL entries for this instance's addresses only "
           "on the subnet it is in")
    for reg in facts.get("target_groups") or []:
        kind = reg.get("kind")
        if kind in ("nlb", "gwlb"):
            name = "Gateway Load Balancer" if kind == "gwlb" else "NLB"
            notes.append(f"registered with a {name} ({reg['arn'].rsplit(':', 1)[-1]}): flows "
                         "through it stay tracked" + acl.replace("it is in", "of its nodes"))
    for way in facts.get("subnet_exits") or []:
        if way["kind"] == "nat":
            notes.append(f"its subnet leaves through NAT gateway {way['id']}: flows through "
                         "it stay tracked" + acl)
        elif way["kind"] == "tgw":
            notes.append(f"its subnet routes through transit gateway {way['id']}: flows "
                         "through it stay tracked" + acl.replace("it is in",
                                                                 "of its attachment"))
    notes.append("DNS to the VPC resolver and the instance metadata service are filtered "
                 "by no security group or network ACL")
    return notes


def _where(place: Location) -> str:
    return f"{place[0]}/{place[1]}" if place[0] else place[1]


def _asg_of(clients: Clients, instance_id: str) -> dict[str, Any] | None:
    try:
        return membership(clients, instance_id)  # throttling retried, briefly
    except Exception:
        # Not being allowed (or able) to read Auto Scaling must not block a containment
        # request; the instance's aws:autoscaling:groupName tag still names the group.
        return None


LIVE_STATES = ["pending", "running", "stopping", "stopped", "shutting-down"]


def search_instances(clients_for: Callable[[Location], Clients], locations: Sequence[Location],
                     name: str | None = None, private_ip: str | None = None
                     ) -> tuple[list[tuple[Location, dict[str, Any]]], dict[str, AwsError]]:
    """Instances (not terminated) by exact Name tag, or by private IPv4 address (of any of
    their network interfaces), in every account and region at once. Returns what was
    found where, and the places that could not be searched."""
    state = {"Name": "instance-state-name", "Values": LIVE_STATES}
    if name is not None:
        searches = [[{"Name": "tag:Name", "Values": [name]}, state]]
    else:
        # The primary address, and any address of any ENI (a filter moto lacks; a place
        # that refuses it is still searched by the first).
        searches = [[{"Name": "private-ip-address", "Values": [private_ip or ""]}, state],
                    [{"Name": "network-interface.addresses.private-ip-address",
                      "Values": [private_ip or ""]}, state]]

    def one(item: tuple[Location, int]) -> tuple[Location, list[dict[str, Any]], AwsError | None]:
        place, index = item
        try:
            pages = clients_for(place).ec2.get_paginator("describe_instances").paginate(
                Filters=searches[index])
            return place, [i for page in pages for r in page.get("Reservations", [])
                           for i in r.get("Instances", [])], None
        except Exception as exc:
            return place, [], describe_error(exc)

    results = parallel(one, [(p, i) for p in locations for i in range(len(searches))])
    found: dict[str, tuple[Location, dict[str, Any]]] = {}
    errors: dict[str, AwsError] = {}
    for (place, instances, error), index in zip(
            results, [i for _ in locations for i in range(len(searches))], strict=True):
        if error is not None and index == 0:
            errors[_where(place)] = error
        for inst in instances:
            found.setdefault(f"{_where(place)}/{inst['InstanceId']}", (place, inst))
    return list(found.values()), errors
