"""A worm across a fleet: 50 instances with 2 ENIs each in two Auto Scaling groups,
contained from one fleet card (`tag:app=web`), with EC2's request token buckets emulated
in front of moto (the fault layer: AWS's documented sizes × --scale, RequestLimitExceeded
when empty) and a fixed latency on every AWS request.

Reported per playbook (`isolate`, `full`):
- seconds from the Approve click to the last ENI sealed, against the floor the buckets
  set for the calls the cut needs (every bucket the cut uses: moves and seals, ACL
  entries), and their ratio (target ≤ 1.25);
- the longest time any ENI spent on the open group;
- ENIs not sealed at the end, and moves back to an ENI's own groups (target 0);
- RequestLimitExceeded answers on the path to the cut (target 0), and in all;
- `full`: seconds until the last snapshot and image, against the floor of their own
  buckets (target ≤ 1.5×).
Prints JSON.

    python benchmarks/fleet.py [--instances 50] [--latency-ms 100] [--scale 1.0]
        [--playbooks isolate,full]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from typing import Any

from bot.logs import setup_logging
from playbooks.store import FINAL_STATES
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.faulty_aws import FaultyAws
from sandbox.harness import start_bot, wait_for

APPROVERS = ("U0LEE", "U0ALEX")
REQUESTER, CHANNEL = "U0DANA", "C1"
MODIFY = "ModifyNetworkInterfaceAttribute"
CUT_PATH = {MODIFY, "CreateNetworkAclEntry", "DetachInstances"}


def build_fleet(world: sandbox_world.World, count: int) -> list[str]:
    """`count` instances (2 ENIs each) in two Auto Scaling groups, all tagged app=web."""
    ids = sandbox_world.add_instances(world, count, name="web", tags={"app": "web"})
    autoscaling = sandbox_world.client("autoscaling")
    ec2 = sandbox_world.client("ec2")
    ec2.create_launch_template(LaunchTemplateName="web", LaunchTemplateData={
        "ImageId": sandbox_world.SANDBOX_IMAGE, "InstanceType": "t3.small"})
    half = (count + 1) // 2
    for n, members in enumerate((ids[:half], ids[half:])):
        name = f"web-{n + 1}"
        autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name, LaunchTemplate={"LaunchTemplateName": "web"},
            MinSize=0, MaxSize=len(members) + 5, DesiredCapacity=0,
            VPCZoneIdentifier=world.subnet_id)
        for start in range(0, len(members), 20):  # AttachInstances takes 20 at a time
            autoscaling.attach_instances(InstanceIds=members[start:start + 20],
                                         AutoScalingGroupName=name)
    return ids


def floor(calls: dict[str, int], limits: dict[str, tuple[float, float]]) -> float:
    """The least time the buckets allow for these calls, each bucket full at the start:
    the slowest bucket's (calls − size) / refill."""
    worst = 0.0
    for action, n in calls.items():
        key = action if action in limits else (
            "describe" if action.startswith(("Describe", "Get")) else "mutating")
        size, refill = limits[key]
        worst = max(worst, max(0.0, (n - size) / refill))
    return worst


def measure(aws: sandbox_world.LocalAws, playbook: str, count: int, latency: float,
            scale: float) -> dict[str, Any]:
    aws.reset()
    faulty = FaultyAws(aws.url, latency=latency).start()
    fake = FakeSlack().start()
    tmp = tempfile.mkdtemp(prefix="cordon-fleet-")
    try:
        world = sandbox_world.seed()
        ids = build_fleet(world, count)
        faulty.throttle_like_ec2(scale=scale)
        limits = dict(faulty.ec2_limits)
        bot = start_bot(fake, f"sqlite:///{tmp}/cordon.db", approvers=",".join(APPROVERS),
                        warm=True,
                        session_factory=lambda: sandbox_world.proxied_session(faulty.url),
                        CORDON_EC2_BUCKETS=",".join(f"{k}={s:g}/{r:g}"
                                                    for k, (s, r) in limits.items()))
        try:
            bot.slack.command(REQUESTER, CHANNEL, f"tag:app=web {playbook} worm across the fleet")
            card = wait_for(lambda: fake.channel_messages(CHANNEL), timeout=600, every=0.2)[0]
            fleet = wait_for(lambda: next((i for i in bot.deps.store.recent(count + 10)
                                           if i.card_ts == card.ts and (i.facts or {}).get(
                                               "plan") != "pending"), None), timeout=120)
            faulty.seen.clear()
            clicked = time.monotonic()
            for approver in APPROVERS:
                bot.slack.click_button(approver, CHANNEL, card.ts, "Approve")
            done = wait_for(lambda: (i := bot.deps.store.get(fleet.id)) is not None
                            and i.status in FINAL_STATES and i, timeout=1800, every=0.5)
            members = bot.deps.store.members(fleet.id)
            failures = Counter(f"{s.name}: {s.error_code}" for m in members
                               if m.status != "contained"
                               for s in bot.deps.store.steps(m.id)
                               if s.status not in ("succeeded", "skipped"))
        finally:
            bot.stop()
        sealed_group = sandbox_world.client("ec2").describe_security_groups(Filters=[
            {"Name": "vpc-id", "Values": [world.vpc_id]},
            {"Name": "group-name", "Values": ["cordon-sealed"]}])["SecurityGroups"][0]["GroupId"]
        open_group = sandbox_world.client("ec2").describe_security_groups(Filters=[
            {"Name": "vpc-id", "Values": [world.vpc_id]},
            {"Name": "group-name", "Values": ["cordon-open"]}])["SecurityGroups"][0]["GroupId"]
        seen = list(faulty.seen)
        moves = [s for s in seen if s.action == MODIFY and s.answered == "forwarded"
                 and "SecurityGroupId.1" in s.params]
        opened: dict[str, float] = {}
        on_open: dict[str, float] = {}
        back = 0
        last_seal = clicked
        for s in sorted(moves, key=lambda s: s.applied_at):
            eni, group = s.params["NetworkInterfaceId"], s.params["SecurityGroupId.1"]
            if group == open_group:
                opened.setdefault(eni, s.applied_at)
            elif group == sealed_group:
                if eni in opened:
                    on_open[eni] = max(on_open.get(eni, 0.0), s.applied_at - opened.pop(eni))
                last_seal = max(last_seal, s.applied_at)
            else:
                back += 1
                opened.pop(eni, None)
        final = {eni: groups for i in ids
                 for eni, groups in sandbox_world.groups_by_eni(i).items()}
        not_sealed = [e for e, g in final.items() if g != [f"cordon-sealed ({sealed_group})"]]
        throttled = Counter(s.action for s in seen if s.answered == "throttle")
        cut_calls = Counter(s.action for s in seen if s.action in CUT_PATH - {"DetachInstances"}
                            and (s.action != MODIFY or "SecurityGroupId.1" in s.params))
        cut_floor = floor(dict(cut_calls), limits)

        def kind(s: Any) -> str:
            if s.action != MODIFY:
                return s.action
            group = s.params.get("SecurityGroupId.1")
            return {open_group: "open move", sealed_group: "seal"}.get(
                group, "conntrack" if group is None else "move back")

        spans: dict[str, list[float]] = {}
        for s in seen:
            if s.answered == "forwarded" and s.applied_at:
                spans.setdefault(kind(s), []).append(s.applied_at - clicked)
        timeline = {k: [round(min(v), 2), round(max(v), 2), len(v)]
                    for k, v in sorted(spans.items(), key=lambda kv: min(kv[1]))
                    if k in ("open move", "seal", "conntrack", "move back", "DetachInstances",
                             "CreateNetworkAclEntry", "ModifyInstanceAttribute",
                             "CreateSnapshots", "CreateImage", "CreateTags")}
        result: dict[str, Any] = {
            "playbook": playbook, "instances": len(ids), "enis": len(final),
            "fleet_status": done.status,
            "members": dict(Counter(m.status for m in members)),
            "not_contained_because": dict(failures),
            "seconds_to_last_seal": round(last_seal - clicked, 2),
            "cut_floor_seconds": round(cut_floor, 2),
            "ratio_to_floor": round((last_seal - clicked) / cut_floor, 2) if cut_floor else None,
            "longest_on_open_group_seconds": round(max(on_open.values(), default=0.0), 2),
            "enis_not_sealed": len(not_sealed),
            "moves_back_to_own_groups": back,
            "throttled_on_cut_path": sum(n for a, n in throttled.items() if a in CUT_PATH),
            "throttled_in_all": dict(throttled),
            "cut_calls": dict(cut_calls),
            "first_last_count_seconds": timeline,
        }
        if playbook == "full":
            evidence = [s for s in seen if s.action in ("CreateSnapshot", "CreateSnapshots",
                                                        "CreateImage")
                        and s.answered == "forwarded"]
            own = Counter(s.action for s in seen if s.action in (
                "CreateSnapshot", "CreateSnapshots", "CreateImage", "CreateTags",
                "ModifyInstanceAttribute"))
            last = max((s.applied_at for s in evidence), default=clicked)
            ev_floor = floor(dict(own), limits)
            result.update({
                "seconds_to_last_snapshot_or_image": round(last - clicked, 2),
                "evidence_floor_seconds": round(ev_floor, 2),
                "evidence_ratio_to_floor": round((last - clicked) / ev_floor, 2)
                if ev_floor else None,
                "evidence_calls": dict(own),
            })
        return result
    finally:
        fake.stop()
        faulty.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--latency-ms", type=float, default=100)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="EC2's bucket sizes and refills × this")
    parser.add_argument("--playbooks", default="isolate,full")
    args = parser.parse_args()
    setup_logging("text", "WARNING")
    aws = sandbox_world.LocalAws().start()
    aws.use()
    results = []
    try:
        for playbook in args.playbooks.split(","):
            results.append(measure(aws, playbook, args.instances, args.latency_ms / 1000,
                                   args.scale))
            print(json.dumps(results[-1]), file=sys.stderr)
    finally:
        aws.stop()
    json.dump({"latency_ms": args.latency_ms, "scale": args.scale, "results": results},
              sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
