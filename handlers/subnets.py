"""Containment that acts on a whole subnet or VPC: a network ACL, a route table, the
internet gateway's routes. Each hits every instance there, so the card shows the blast
radius before anyone approves."""

from __future__ import annotations

from typing import Any

from handlers.aws import Clients
from handlers.fanout import both


def subnets_of(facts: dict[str, Any]) -> list[str]:
    """Every subnet the instance has a network interface in."""
    found = {e.get("subnet_id") for e in facts.get("enis", []) if e.get("subnet_id")}
    if facts.get("subnet_id"):
        found.add(facts["subnet_id"])
    return sorted(s for s in found if s)


def _name(inst: dict[str, Any]) -> str:
    return next((t["Value"] for t in inst.get("Tags", []) if t["Key"] == "Name"), "")


def blast_radius(clients: Clients, facts: dict[str, Any], method: str,
                 options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The other instances a subnet- or VPC-wide change hits, and what it changes."""
    subnets = subnets_of(facts)
    vpc_id = facts.get("vpc_id", "")
    ec2 = clients.ec2
    if method == "nacl" and (options or {}).get("mode") == "insert":
        return _shared_acl_radius(clients, facts, subnets)
    where = ({"Name": "vpc-id", "Values": [vpc_id]} if method == "igw"
             else {"Name": "subnet-id", "Values": subnets})

    def instances() -> list[dict[str, Any]]:
        return _instances(clients, where)

    def changes() -> list[str]:
        if method == "nacl":
            acls = ec2.describe_network_acls(Filters=[
                {"Name": "association.subnet-id", "Values": subnets}])["NetworkAcls"]
            return [f"{a['SubnetId']}: network ACL {acl['NetworkAclId']} → Cordon's isolation ACL"
                    for acl in acls for a in acl.get("Associations", [])
                    if a["SubnetId"] in subnets]
        if method == "route":
            tables = ec2.describe_route_tables(Filters=[
                {"Name": "association.subnet-id", "Values": subnets}])["RouteTables"]
            explicit = {a["SubnetId"]: t["RouteTableId"] for t in tables
                        for a in t.get("Associations", []) if a.get("SubnetId") in subnets}
            return [f"{s}: route table {explicit.get(s, 'main (implicit)')} → Cordon's "
                    "isolation route table (VPC-local route only)" for s in subnets]
        tables = route_tables(clients, vpc_id)
        exits.extend(other_exits(clients, vpc_id, tables))
        return [f"{r['route_table_id']}: route {next(iter(r['destination'].values()))} → "
                f"{r['gateway_id']} removed" for r in internet_routes(clients, vpc_id, tables)]

    exits: list[str] = []
    found, changed = both(instances, changes)
    radius = {"scope": "vpc" if method == "igw" else "subnet", "subnets": subnets,
              "vpc_id": vpc_id, "others": _others(found, facts), "changes": changed}
    if method == "igw":
        radius["still_open"] = exits
    return radius


def _instances(clients: Clients, where: dict[str, Any]) -> list[dict[str, Any]]:
    paginator = clients.ec2.get_paginator("describe_instances")
    found = []
    for page in paginator.paginate(Filters=[where, {
            "Name": "instance-state-name", "Values": ["pending", "running", "stopping",
                                                      "stopped"]}]):
        for reservation in page.get("Reservations", []):
            found += reservation.get("Instances", [])
    return found


def _others(found: list[dict[str, Any]], facts: dict[str, Any]) -> list[dict[str, str]]:
    others = [{"id": i["InstanceId"], "name": _name(i)} for i in found
              if i["InstanceId"] != facts.get("instance_id")]
    return sorted(others, key=lambda o: o["id"])


def _shared_acl_radius(clients: Clients, facts: dict[str, Any], subnets: list[str]
                       ) -> dict[str, Any]:
    """Entries inserted into a subnet's ACL apply to every subnet that shares it."""
    acls = clients.ec2.describe_network_acls(Filters=[
        {"Name": "association.subnet-id", "Values": subnets}])["NetworkAcls"]
    hit = sorted({a["SubnetId"] for acl in acls for a in acl.get("Associations", [])})
    changes = []
    for acl in acls:
        users = ", ".join(a["SubnetId"] for a in acl.get("Associations", []))
        changes.append(f"{acl['NetworkAclId']} (used by {users}): deny-all entries inserted "
                       "ahead of its rules")
    found = _instances(clients, {"Name": "subnet-id", "Values": hit or subnets})
    return {"scope": "subnet", "subnets": hit or subnets, "vpc_id": facts.get("vpc_id", ""),
            "others": _others(found, facts), "changes": changes}


def route_destination(route: dict[str, Any]) -> dict[str, str]:
    """A route's destination as the keyword delete_route / create_route take."""
    for key in ("DestinationCidrBlock", "DestinationIpv6CidrBlock", "DestinationPrefixListId"):
        if route.get(key):
            return {key: route[key]}
    return {}


# A route's target, and whether Cordon's `igw` removes it.
INTERNET_TARGETS = (("GatewayId", "igw-"), ("EgressOnlyInternetGatewayId", "eigw-"))
OTHER_TARGETS = ("NatGatewayId", "TransitGatewayId", "VpcPeeringConnectionId",
                 "NetworkInterfaceId", "InstanceId", "CarrierGatewayId", "LocalGatewayId",
                 "CoreNetworkArn", "GatewayId")
DEFAULT_ROUTES = ("0.0.0.0/0", "::/0")


def route_tables(clients: Clients, vpc_id: str) -> list[dict[str, Any]]:
    tables: list[dict[str, Any]] = clients.ec2.describe_route_tables(Filters=[
        {"Name": "vpc-id", "Values": [vpc_id]}])["RouteTables"]
    return tables


def _internet_target(route: dict[str, Any]) -> tuple[str, str] | None:
    for key, prefix in INTERNET_TARGETS:
        if str(route.get(key, "")).startswith(prefix):
            return key, str(route[key])
    return None


def internet_routes(clients: Clients, vpc_id: str,
                    tables: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every route of the VPC's route tables that targets an internet gateway or an
    egress-only internet gateway (IPv6)."""
    found = []
    for t in tables if tables is not None else route_tables(clients, vpc_id):
        for r in t.get("Routes", []):
            target = _internet_target(r)
            if target:
                found.append({"route_table_id": t["RouteTableId"], "target_key": target[0],
                              "gateway_id": target[1], "destination": route_destination(r)})
    return found


def other_exits(clients: Clients, vpc_id: str,
                tables: list[dict[str, Any]] | None = None) -> list[str]:
    """Default routes out of the VPC that `igw` does not remove: through a NAT gateway,
    a transit gateway, a peering connection, a VPN gateway, an appliance…"""
    exits = []
    for t in tables if tables is not None else route_tables(clients, vpc_id):
        for r in t.get("Routes", []):
            dest = r.get("DestinationCidrBlock") or r.get("DestinationIpv6CidrBlock")
            if dest not in DEFAULT_ROUTES or _internet_target(r) or r.get("State") == "blackhole":
                continue
            for key in OTHER_TARGETS:
                value = str(r.get(key) or "")
                if value and value != "local":
                    exits.append(f"{t['RouteTableId']}: {dest} → {value}")
                    break
    return exits
