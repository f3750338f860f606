"""Take the instance out of its Auto Scaling group and load balancers before the network
cut: a group whose health checks fail replaces — and terminates — the instance, and
the evidence with it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from handlers.aws import parallel
from handlers.base import Action, Outcome, StepContext, VerificationFailed, register

GONE_STATES = {"Detaching", "Detached"}
DEREGISTERED = {"draining", "unused"}


def _asg_membership(ctx: StepContext) -> dict[str, Any] | None:
    resp = ctx.clients.autoscaling.describe_auto_scaling_instances(
        InstanceIds=[ctx.target.resource_id])
    for item in resp.get("AutoScalingInstances", []):
        if item.get("LifecycleState") not in GONE_STATES:
            return {"name": item["AutoScalingGroupName"], "state": item.get("LifecycleState")}
    return None


def _target_groups(ctx: StepContext) -> list[str]:
    arns: list[str] = []
    paginator = ctx.clients.client("elbv2").get_paginator("describe_target_groups")
    for page in paginator.paginate():
        arns += [tg["TargetGroupArn"] for tg in page.get("TargetGroups", [])
                 if tg.get("TargetType", "instance") == "instance"]
    return arns


def _classic_elbs(ctx: StepContext) -> list[str]:
    resp = ctx.clients.client("elb").describe_load_balancers()
    return [lb["LoadBalancerName"] for lb in resp.get("LoadBalancerDescriptions", [])
            if any(i["InstanceId"] == ctx.target.resource_id for i in lb.get("Instances", []))]


def _registrations(ctx: StepContext, arns: list[str]) -> list[dict[str, Any]]:
    """Target groups the instance is registered in (and on which ports)."""
    elbv2 = ctx.clients.client("elbv2")

    def one(arn: str) -> list[dict[str, Any]]:
        resp = elbv2.describe_target_health(TargetGroupArn=arn)
        return [{"arn": arn, "port": d["Target"].get("Port")}
                for d in resp.get("TargetHealthDescriptions", [])
                if d["Target"]["Id"] == ctx.target.resource_id
                and d.get("TargetHealth", {}).get("State") not in DEREGISTERED]

    return [reg for regs in parallel(one, arns) for reg in regs]


def _target(instance_id: str, registration: dict[str, Any]) -> dict[str, Any]:
    port = registration.get("port")
    return {"Id": instance_id, "Port": port} if port else {"Id": instance_id}


def observe(ctx: StepContext) -> dict[str, Any]:
    """Group, target groups and classic load balancers: two round trips at most."""
    asg, arns, elbs = parallel(lambda f: f(ctx), [_asg_membership, _target_groups, _classic_elbs])
    return {"asg": asg, "target_groups": _registrations(ctx, arns), "classic_elbs": elbs}


@register
class DetachFromAutoScaling(Action):
    name = "detach-from-auto-scaling"
    description = ("detach from its Auto Scaling group and load balancers, so that the group "
                   "does not replace (terminate) it once its network is cut")
    permissions = (
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DetachInstances",
        "autoscaling:AttachInstances",
        "elasticloadbalancing:DescribeTargetGroups",
        "elasticloadbalancing:DescribeTargetHealth",
        "elasticloadbalancing:DeregisterTargets",
        "elasticloadbalancing:RegisterTargets",
        "elasticloadbalancing:DescribeLoadBalancers",
        "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
        "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
    )

    def _observe(self, ctx: StepContext) -> dict[str, Any]:
        if "state" not in ctx.memo:
            ctx.memo["state"] = observe(ctx)
        state: dict[str, Any] = ctx.memo["state"]
        return state

    def check(self, ctx: StepContext) -> bool:
        s = self._observe(ctx)
        return s["asg"] is None and not s["target_groups"] and not s["classic_elbs"]

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        s = self._observe(ctx)
        return {"asg": s["asg"]["name"] if s["asg"] else None,
                "target_groups": s["target_groups"], "classic_elbs": s["classic_elbs"]}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        instance_id = ctx.target.resource_id
        decrement = bool(ctx.options.get("asg_decrement", False))
        calls: list[Callable[[], Any]] = []
        if captured["asg"]:
            calls.append(partial(ctx.clients.autoscaling.detach_instances,
                                 InstanceIds=[instance_id],
                                 AutoScalingGroupName=captured["asg"],
                                 ShouldDecrementDesiredCapacity=decrement))
        elbv2, elb = ctx.clients.client("elbv2"), ctx.clients.client("elb")
        for reg in captured["target_groups"]:
            calls.append(partial(elbv2.deregister_targets, TargetGroupArn=reg["arn"],
                                 Targets=[_target(instance_id, reg)]))
        for name in captured["classic_elbs"]:
            calls.append(partial(elb.deregister_instances_from_load_balancer,
                                 LoadBalancerName=name, Instances=[{"InstanceId": instance_id}]))
        parallel(lambda call: call(), calls)
        parts = []
        if captured["asg"]:
            then = ("desired capacity lowered" if decrement
                    else "the group launches a replacement")
            parts.append(f"detached from {captured['asg']} ({then})")
        if captured["target_groups"]:
            parts.append(f"deregistered from {len(captured['target_groups'])} target group(s)")
        if captured["classic_elbs"]:
            parts.append(f"deregistered from {', '.join(captured['classic_elbs'])}")
        return Outcome("; ".join(parts))

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        s = observe(ctx)
        problems = []
        if s["asg"] is not None:
            problems.append(f"still in {s['asg']['name']} ({s['asg']['state']})")
        problems += [f"still registered in {r['arn']}" for r in s["target_groups"]]
        problems += [f"still registered with {n}" for n in s["classic_elbs"]]
        if problems:
            raise VerificationFailed("; ".join(problems))
        return "in no Auto Scaling group, target group or classic load balancer"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        parts = []
        if captured.get("asg"):
            parts.append(f"re-attach to {captured['asg']}")
        if captured.get("target_groups"):
            parts.append(f"re-register in {len(captured['target_groups'])} target group(s)")
        if captured.get("classic_elbs"):
            parts.append(f"re-register with {', '.join(captured['classic_elbs'])}")
        return "; ".join(parts) or "nothing (it was in no group)"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        instance_id = ctx.target.resource_id
        calls: list[Callable[[], Any]] = []
        if captured.get("asg"):
            calls.append(partial(ctx.clients.autoscaling.attach_instances,
                                 InstanceIds=[instance_id],
                                 AutoScalingGroupName=captured["asg"]))
        elbv2, elb = ctx.clients.client("elbv2"), ctx.clients.client("elb")
        for reg in captured.get("target_groups", []):
            calls.append(partial(elbv2.register_targets, TargetGroupArn=reg["arn"],
                                 Targets=[_target(instance_id, reg)]))
        for name in captured.get("classic_elbs", []):
            calls.append(partial(elb.register_instances_with_load_balancer,
                                 LoadBalancerName=name, Instances=[{"InstanceId": instance_id}]))
        parallel(lambda call: call(), calls)
        return Outcome(self.describe_undo(captured))
