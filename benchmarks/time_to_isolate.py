"""Time from the Approve click to the moment every ENI is on the sealed group, counted
in sequential AWS round trips, with a fixed latency added to every AWS request.

Two cases: the first containment in a VPC (the isolation groups must be created) and
one where they already exist (`python -m bot prepare`); for the `isolate` playbook and
for `full` (which protects evidence and leaves Auto Scaling before the cut). Beside
them, a naive implementation that makes the same changes as `isolate` one call after
another, measured in the same run. Prints JSON.

    python benchmarks/time_to_isolate.py [--latency-ms 100]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from typing import Any

import boto3

from bot.logs import setup_logging
from bot.sandbox.fake_slack import FakeSlack
from bot.sandbox.harness import start_bot, wait_for
from bot.sandbox.rounds import Recorder, sealed_at, sequential_round_trips
from handlers import sandbox_world
from handlers.aws import ClientPool
from handlers.isolation import prepare_vpcs
from playbooks.store import FINAL_STATES

TARGETS = {"first_in_vpc": 5, "groups_exist": 3}
FULL_EXTRA = 2  # full may take at most this many more round trips than isolate


def fresh_world(aws: sandbox_world.LocalAws, prepared: bool) -> sandbox_world.World:
    """A new seeded account; with `prepared`, the VPC's isolation groups already exist."""
    aws.reset()
    world = sandbox_world.seed()
    if prepared:
        prepare_vpcs(ClientPool().for_region(world.region), [world.vpc_id])
    return world


def measure_cordon(aws: sandbox_world.LocalAws, latency: float, prepared: bool,
                   playbook: str) -> dict[str, Any]:
    world = fresh_world(aws, prepared)
    recorder = Recorder(latency)
    fake = FakeSlack().start()
    fake.usergroups["S0ONCALL"] = ["U0LEE"]
    db = tempfile.mkdtemp(prefix="cordon-bench-")
    bot = start_bot(fake, f"sqlite:///{db}/cordon.db", session_factory=recorder.session)
    try:
        bot.slack.command("U0DANA", "C1", f"{world.instance_id} {playbook} benchmark")
        card = wait_for(lambda: fake.channel_messages("C1"), timeout=60)[0]
        # A running bot has its AWS clients and approver cache warm; a fresh one may not.
        bot.deps.warmed.wait(30)
        bot.deps.approvers.is_approver("U0LEE")
        clicked = time.monotonic()
        bot.slack.click_button("U0LEE", "C1", card.ts, "Approve")
        incident = wait_for(lambda: next(
            (i for i in bot.deps.store.recent() if i.status in FINAL_STATES), None), timeout=60)
        step = next(s for s in bot.deps.store.steps(incident.id)
                    if s.name == "isolate-security-groups")
        sealed = (step.details or {})["sealed_group"]
        calls = recorder.since(clicked)
        enis = len(sandbox_world.groups_by_eni(world.instance_id))
        done = sealed_at(calls, sealed, enis)
        return {
            "round_trips": sequential_round_trips(calls, done),
            "seconds": round(done - clicked, 3),
            "aws_calls": len([c for c in calls if c.end <= done]),
            "status": incident.status,
        }
    finally:
        bot.stop()
        fake.stop()


def naive_isolate(session: boto3.session.Session, instance_id: str, prepared: bool
                  ) -> tuple[str, float]:
    """What a script written in a hurry does: one call after another."""
    ec2 = session.client("ec2", region_name="us-east-1")
    started = time.monotonic()
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    vpc = inst["VpcId"]
    found = ec2.describe_security_groups(Filters=[
        {"Name": "vpc-id", "Values": [vpc]},
        {"Name": "tag:cordon:managed", "Values": ["true"]}])["SecurityGroups"]
    by_name = {g["GroupName"]: g["GroupId"] for g in found}
    if prepared:
        open_id, sealed_id = by_name["cordon-open"], by_name["cordon-sealed"]
    else:
        open_id = ec2.create_security_group(GroupName="naive-open", Description="open",
                                            VpcId=vpc)["GroupId"]
        sealed_id = ec2.create_security_group(GroupName="naive-sealed", Description="sealed",
                                              VpcId=vpc)["GroupId"]
        ec2.create_tags(Resources=[open_id, sealed_id],
                        Tags=[{"Key": "cordon:managed", "Value": "true"}])
        for perm in ({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
                     {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}):
            ec2.authorize_security_group_ingress(GroupId=open_id, IpPermissions=[perm])
        ec2.authorize_security_group_egress(GroupId=open_id, IpPermissions=[
            {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}])
        ec2.revoke_security_group_egress(GroupId=sealed_id, IpPermissions=[
            {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    for eni in inst["NetworkInterfaces"]:
        ec2.modify_network_interface_attribute(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                               Groups=[open_id])
        ec2.modify_network_interface_attribute(
            NetworkInterfaceId=eni["NetworkInterfaceId"],
            ConnectionTrackingSpecification={"TcpEstablishedTimeout": 60,
                                             "UdpStreamTimeout": 60, "UdpTimeout": 30})
    for eni in inst["NetworkInterfaces"]:
        ec2.modify_network_interface_attribute(NetworkInterfaceId=eni["NetworkInterfaceId"],
                                               Groups=[sealed_id])
    return sealed_id, started


def measure_naive(aws: sandbox_world.LocalAws, latency: float, prepared: bool
                  ) -> dict[str, Any]:
    world = fresh_world(aws, prepared)
    recorder = Recorder(latency)
    session = recorder.session()
    session.client("ec2", region_name="us-east-1")  # client creation is not a round trip
    sealed, started = naive_isolate(session, world.instance_id, prepared)
    calls = recorder.since(started)
    done = sealed_at(calls, sealed, len(sandbox_world.groups_by_eni(world.instance_id)))
    return {"round_trips": sequential_round_trips(calls, done),
            "seconds": round(done - started, 3), "aws_calls": len(calls)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=100.0)
    args = parser.parse_args(argv)
    latency = args.latency_ms / 1000
    setup_logging("text", "ERROR")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    aws = sandbox_world.LocalAws().start()
    aws.use()
    try:
        result: dict[str, Any] = {"latency_ms": args.latency_ms, "enis": 2, "isolate": {},
                                  "full": {}, "naive": {},
                                  "targets": {"isolate": TARGETS,
                                              "full": f"isolate + {FULL_EXTRA}"}}
        for case, prepared in (("first_in_vpc", False), ("groups_exist", True)):
            for playbook in ("isolate", "full"):
                result[playbook][case] = measure_cordon(aws, latency, prepared, playbook)
            result["naive"][case] = measure_naive(aws, latency, prepared)
        result["met"] = all(
            result["isolate"][c]["round_trips"] <= t
            and result["full"][c]["round_trips"] <= result["isolate"][c]["round_trips"]
            + FULL_EXTRA for c, t in TARGETS.items())
    finally:
        aws.stop()
    print(json.dumps(result, indent=2))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
