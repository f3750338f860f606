"""Time from the Approve click to the moment every ENI is on the sealed group, counted
in sequential AWS round trips (the longest chain of AWS requests that each waited for
the one before), with a fixed latency added to every AWS request. The chain comes from
the recorded request intervals, so a busy machine does not change it; the wall time is
given beside it, as a ratio to the chain.

Cases: `isolate` and `full` on the first use in a VPC and with the isolation groups
present; `full` on an Auto Scaling member behind an ALB, also in a region with 50 more
target groups; `isolate` on an instance with 8 ENIs; `isolate` and `full` on an
instance behind a NAT gateway (done once its ACL entries have answered too); a burst
of 20 `isolate` approvals clicked at once; and a naive script making `isolate`'s changes
one call after another.
The bot's CPU per containment is measured with moto in a process of its own. Prints JSON.

    python benchmarks/time_to_isolate.py [--latency-ms 100] [--burst 20]
        [--database-url postgresql+psycopg://…]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import boto3
from sqlalchemy import create_engine, text

from bot.logs import setup_logging
from handlers.aws import ClientPool
from handlers.isolation import prepare_vpcs
from playbooks.store import FINAL_STATES
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, start_bot, wait_for
from sandbox.rounds import Recorder, seal_moves, sealed_at, sequential_round_trips

# The longest chain of round trips from the click to the last ENI sealed.
TARGETS = {"isolate_first_in_vpc": 2, "isolate_groups_exist": 2, "full_first_in_vpc": 3,
           "full_groups_exist": 3, "full_fleet_alb": 3, "full_fleet_50_target_groups": 3,
           "isolate_8_enis": 2, "isolate_behind_nat": 2, "full_behind_nat": 3, "burst": 6}
APPROVER, REQUESTER, CHANNEL = "U0LEE", "U0DANA", "C1"


class MotoProcess:
    """moto's server in a process of its own, so that this process's CPU is the bot's."""

    def __init__(self) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MotoProcess:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._up, timeout=60, every=0.1)
        os.environ.update(sandbox_world.SANDBOX_ENV)
        os.environ["AWS_ENDPOINT_URL"] = self.url
        return self

    def _up(self) -> bool:
        try:
            urllib.request.urlopen(self.url + "/moto-api/", timeout=2).read()
        except OSError:
            return False
        return True

    def reset(self) -> None:
        req = urllib.request.Request(self.url + "/moto-api/reset", method="POST", data=b"")
        urllib.request.urlopen(req, timeout=10).read()

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)


def fresh_world(aws: MotoProcess, prepared: bool, extra_enis: int = 0,
                fleet: bool = False, more_target_groups: int = 0,
                nat: bool = False) -> sandbox_world.World:
    """A new seeded account; with `prepared`, the VPC's isolation groups already exist."""
    aws.reset()
    world = sandbox_world.seed()
    ec2 = boto3.session.Session().client("ec2", region_name=world.region)
    for index in range(extra_enis):
        eni = ec2.create_network_interface(SubnetId=world.subnet_id, Groups=[world.web_group])
        ec2.attach_network_interface(NetworkInterfaceId=eni["NetworkInterface"][
            "NetworkInterfaceId"], InstanceId=world.instance_id, DeviceIndex=2 + index)
    if fleet:
        sandbox_world.join_fleet(world)
    if nat:
        sandbox_world.add_nat_gateway(world)
    elbv2 = boto3.session.Session().client("elbv2", region_name=world.region)
    for index in range(more_target_groups):
        elbv2.create_target_group(Name=f"other-{index}", Protocol="HTTP", Port=80,
                                  VpcId=world.vpc_id, TargetType="instance")
    if prepared:
        prepare_vpcs(ClientPool().for_region(world.region), [world.vpc_id])
    return world


# Where the bot keeps its record: a new SQLite file per bot, or (--database-url) a new
# schema of that PostgreSQL database per bot.
DATABASE: dict[str, str] = {"url": ""}
SCHEMAS: list[str] = []


def _database() -> str:
    url = DATABASE["url"]
    if not url:
        return f"sqlite:///{tempfile.mkdtemp(prefix='cordon-bench-')}/cordon.db"
    schema = "bench_" + uuid.uuid4().hex[:12]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine.dispose()
    SCHEMAS.append(schema)
    return f"{url}?options=-csearch_path%3D{schema}"


def _drop_schemas() -> None:
    if not SCHEMAS:
        return
    engine = create_engine(DATABASE["url"])
    with engine.begin() as conn:
        for schema in SCHEMAS:
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()


def _bot(recorder: Recorder) -> tuple[RunningBot, FakeSlack]:
    fake = FakeSlack().start()
    fake.usergroups["S0ONCALL"] = [APPROVER]
    bot = start_bot(fake, _database(), session_factory=recorder.session, warm=True)
    # A running bot has its AWS clients and approver cache warm; a fresh one may not.
    bot.deps.warmed.wait(30)
    bot.deps.approvers.is_approver(APPROVER)
    return bot, fake


def _request(bot: RunningBot, fake: FakeSlack, instance_id: str, playbook: str,
             cards: int) -> Any:
    bot.slack.command(REQUESTER, CHANNEL, f"{instance_id} {playbook} benchmark")
    return wait_for(lambda: len(fake.channel_messages(CHANNEL)) >= cards
                    and fake.channel_messages(CHANNEL)[cards - 1], timeout=60)


def _sealed_group(bot: RunningBot, incident_id: str) -> str:
    step = next(s for s in bot.deps.store.steps(incident_id)
                if s.name == "isolate-security-groups")
    return str((step.details or {})["sealed_group"])


def measure_cordon(aws: MotoProcess, latency: float, playbook: str, prepared: bool,
                   **world_options: Any) -> dict[str, Any]:
    world = fresh_world(aws, prepared, **world_options)
    recorder = Recorder(latency)
    bot, fake = _bot(recorder)
    try:
        card = _request(bot, fake, world.instance_id, playbook, 1)
        cpu, clicked = time.process_time(), time.monotonic()
        bot.slack.click_button(APPROVER, CHANNEL, card.ts, "Approve")
        incident = wait_for(lambda: next(
            (i for i in bot.deps.store.recent() if i.status in FINAL_STATES), None), timeout=60)
        cpu = time.process_time() - cpu
        calls = recorder.since(clicked)
        enis = len(sandbox_world.groups_by_eni(world.instance_id))
        done = sealed_at(calls, _sealed_group(bot, incident.id), enis)
        # Behind a NAT gateway the cut also needs its ACL entries (sever-tracked-flows).
        severed = [c.end for c in calls if c.operation == "CreateNetworkAclEntry"]
        done = max([done, *severed])
        chain = sequential_round_trips(calls, done)
        return {
            "round_trips": chain,
            "seconds": round(done - clicked, 3),
            "wall_to_chain": round((done - clicked) / (chain * latency), 2),
            "aws_calls_before_sealed": len([c for c in calls if c.end <= done]),
            "enis": enis,
            "acl_entries": len(severed),
            "cpu_ms_whole_run": round(cpu * 1000),
            "status": incident.status,
        }
    finally:
        bot.stop()
        fake.stop()


def measure_burst(aws: MotoProcess, latency: float, count: int) -> dict[str, Any]:
    """`count` instances, each with an `isolate` card, approved by clicks sent at once."""
    world = fresh_world(aws, prepared=True)
    ec2 = boto3.session.Session().client("ec2", region_name=world.region)
    others = ec2.run_instances(
        ImageId=sandbox_world.SANDBOX_IMAGE, MinCount=count - 1, MaxCount=count - 1,
        InstanceType="t3.medium",
        NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": world.subnet_id,
                            "Groups": [world.web_group]}])["Instances"]
    instances = [world.instance_id] + [i["InstanceId"] for i in others]
    recorder = Recorder(latency)
    bot, fake = _bot(recorder)
    try:
        cards = [_request(bot, fake, iid, "isolate", n)
                 for n, iid in enumerate(instances, start=1)]
        by_ts = {c.ts: iid for c, iid in zip(cards, instances, strict=True)}
        clicks: dict[str, float] = {}
        go = threading.Barrier(len(cards))

        def click(card: Any) -> None:
            go.wait()
            clicks[by_ts[card.ts]] = time.monotonic()
            bot.slack.click_button(APPROVER, CHANNEL, card.ts, "Approve")

        cpu, first = time.process_time(), time.monotonic()
        threads = [threading.Thread(target=click, args=(c,)) for c in cards]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_for(lambda: sum(1 for i in bot.deps.store.recent(limit=len(cards))
                             if i.status in FINAL_STATES) == len(cards), timeout=120)
        cpu = time.process_time() - cpu
        first = min(clicks.values())
        calls = recorder.since(first)
        incidents = bot.deps.store.recent(limit=len(cards))
        sealed = {_sealed_group(bot, i.id) for i in incidents}
        assert len(sealed) == 1
        eni_of = {e["NetworkInterfaceId"]: r["InstanceId"] for r in [
            i for res in ec2.describe_instances(InstanceIds=instances)["Reservations"]
            for i in res["Instances"]] for e in r["NetworkInterfaces"]}
        moves = seal_moves(calls, sealed.pop())
        assert len(moves) == len(eni_of), f"{len(moves)} seals for {len(eni_of)} ENIs"
        done = max(c.end for c in moves)
        first_move: dict[str, float] = {}
        for call in calls:
            if call.operation == "ModifyNetworkInterfaceAttribute" and "Groups" in call.params:
                iid = eni_of[call.params["NetworkInterfaceId"]]
                first_move[iid] = min(first_move.get(iid, call.start), call.start)
        waits = [first_move[i] - clicks[i] for i in instances]
        clicks_span = max(clicks.values()) - first
        chain = sequential_round_trips(calls, done)
        return {
            "instances": len(cards),
            "round_trips": chain,
            "seconds": round(done - first, 3),
            "clicks_sent_within_s": round(clicks_span, 3),
            "longest_click_to_first_move_s": round(max(waits), 3),
            "statuses": sorted({i.status for i in incidents}),
            "cpu_ms_per_containment": round(cpu * 1000 / len(cards)),
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


def measure_naive(aws: MotoProcess, latency: float, prepared: bool) -> dict[str, Any]:
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
    parser.add_argument("--burst", type=int, default=20, help="approvals clicked at once")
    parser.add_argument("--database-url", default="",
                        help="a PostgreSQL database (default: a SQLite file)")
    args = parser.parse_args(argv)
    DATABASE["url"] = args.database_url
    latency = args.latency_ms / 1000
    setup_logging("text", "ERROR")
    aws = MotoProcess().start()
    cases: dict[str, Callable[[], dict[str, Any]]] = {
        "isolate_first_in_vpc": lambda: measure_cordon(aws, latency, "isolate", False),
        "isolate_groups_exist": lambda: measure_cordon(aws, latency, "isolate", True),
        "full_first_in_vpc": lambda: measure_cordon(aws, latency, "full", False),
        "full_groups_exist": lambda: measure_cordon(aws, latency, "full", True),
        "full_fleet_alb": lambda: measure_cordon(aws, latency, "full", True, fleet=True),
        "full_fleet_50_target_groups": lambda: measure_cordon(
            aws, latency, "full", True, fleet=True, more_target_groups=50),
        "isolate_8_enis": lambda: measure_cordon(aws, latency, "isolate", True, extra_enis=6),
        "isolate_behind_nat": lambda: measure_cordon(aws, latency, "isolate", True, nat=True),
        "full_behind_nat": lambda: measure_cordon(aws, latency, "full", True, nat=True),
        "burst": lambda: measure_burst(aws, latency, args.burst),
    }
    try:
        result: dict[str, Any] = {"latency_ms": args.latency_ms, "targets": TARGETS}
        for name, measure in cases.items():
            result[name] = {**measure(), "target": TARGETS[name]}
        result["naive"] = {case: measure_naive(aws, latency, prepared)
                           for case, prepared in (("first_in_vpc", False),
                                                  ("groups_exist", True))}
        result["met"] = all(result[name]["round_trips"] <= target
                            for name, target in TARGETS.items())
    finally:
        aws.stop()
        _drop_schemas()
    print(json.dumps(result, indent=2))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
