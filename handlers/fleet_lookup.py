"""Find the instances of a fleet request: an Auto Scaling group's members, or every
instance carrying a tag, in one account and region."""

from __future__ import annotations

from handlers.aws import Clients

PERMISSIONS = ("ec2:DescribeInstances", "autoscaling:DescribeAutoScalingGroups",
               "ec2:DescribeNetworkInterfaces")
# Instances that can still be reached: a terminated one has nothing left to contain.
LIVE_STATES = ["pending", "running", "stopping", "stopped"]


def group_members(clients: Clients, name: str) -> list[str] | None:
    """The instances of an Auto Scaling group; None when there is no such group here."""
    groups = clients.autoscaling.describe_auto_scaling_groups(
        AutoScalingGroupNames=[name])["AutoScalingGroups"]
    if not groups:
        return None
    return sorted(str(i["InstanceId"]) for i in groups[0].get("Instances", []))


def tagged(clients: Clients, key: str, value: str) -> list[str]:
    """Every live instance whose tag `key` is exactly `value`."""
    found: list[str] = []
    pages = clients.ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": f"tag:{key}", "Values": [value]},
        {"Name": "instance-state-name", "Values": LIVE_STATES}])
    for page in pages:
        for reservation in page.get("Reservations", []):
            found.extend(str(i["InstanceId"]) for i in reservation.get("Instances", []))
    return sorted(found)



def vpc_addresses(clients: Clients, vpc_id: str) -> list[str]:
    """Every private IPv4 address of every network interface in the VPC."""
    found: list[str] = []
    pages = clients.ec2.get_paginator("describe_network_interfaces").paginate(
        Filters=[{"Name": "vpc-id", "Values": [vpc_id]}])
    for page in pages:
        for eni in page.get("NetworkInterfaces", []):
            found.extend(str(a["PrivateIpAddress"]) for a in eni.get("PrivateIpAddresses", [])
                         if a.get("PrivateIpAddress"))
    return found
