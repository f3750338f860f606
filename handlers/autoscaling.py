"""Take the instance out of its Auto Scaling group and load balancers before the network
cut: a group whose health checks fail replaces — and terminates — the instance, and
the evidence with it.

Only the Auto Scaling detach blocks the cut. Deregistration from load balancers is
best effort and reported: the instance is not terminated by a load balancer, and a
sealed instance answers no health check anyway. The load balancers are found when the
card is made (`fleet_facts`), from the group's own TargetGroupARNs/LoadBalancerNames
and the registrations of the instance, so that no scan of the region's target groups
lies on the path to the cut.

What real AWS does that moto does not show: detaching an instance from a group also
deregisters it from the group's own load balancers and target groups (moto does not);
an instance in `Pending*` cannot be detached until it is InService, one in
`Terminating*` is being terminated whatever Cordon does; reads are throttled under
load (retried here with backoff, never fatal)."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from handlers.aws import Clients
from handlers.base import (
    Action,
    Outcome,
    StepContext,
    StepFailed,
    VerificationFailed,
)
from handlers.fanout import both, parallel
from handlers.retry import Backoff, describe_error

GONE_STATES = {"Detaching", "Detached"}
DETACHABLE = {"InService", "Standby"}
# Moving on its own within seconds to a state that can be detached.
SETTLING = {"EnteringStandby"}
LAUNCHING_PREFIX = ("Pending", "Warmed")
TERMINATING_PREFIX = ("Terminating", "Terminated", "Quarantined")
DEREGISTERED = {"draining", "unused"}
READ_RETRY = Backoff(attempts=6, base=0.2, cap=3.0)
SETTLE_RETRY = Backoff(attempts=8, base=0.5, cap=4.0)

# What the card's look-up calls to find the load balancers (see ec2_lookup).
FLEET_PERMISSIONS = (
    "autoscaling:DescribeAutoScalingGroups",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DescribeLoadBalancers",
)


def membership(clients: Clients, instance_id: str) -> dict[str, Any] | None:
    """The instance's group and lifecycle state, or None; throttling retried."""
    autoscaling = clients.client("autoscaling", cut=True)  # retried here, not in botocore
    resp = READ_RETRY.call(lambda: autoscaling.describe_auto_scaling_instances(
        InstanceIds=[instance_id]))
    for item in resp.get("AutoScalingInstances", []):
        if item.get("LifecycleState") not in GONE_STATES:
            return {"name": item["AutoScalingGroupName"], "state": item.get("LifecycleState")}
    return None


def fleet_facts(clients: Clients, instance_id: str, asg: str | None) -> dict[str, Any]:
    """For the card: the target groups (with ports) and classic load balancers the
    instance is registered with — its group's own, and its own registrations."""
    elbv2, elb = clients.client("elbv2"), clients.client("elb")

    kinds: dict[str, str] = {}

    def target_groups() -> list[str]:
        arns: list[str] = []
        for page in elbv2.get_paginator("describe_target_groups").paginate():
            for tg in page.get("TargetGroups", []):
                if tg.get("TargetType", "instance") == "instance":
                    arns.append(tg["TargetGroupArn"])
                    kinds[tg["TargetGroupArn"]] = balancer_kind(tg.get("Protocol"))
        return arns

    def classic() -> list[str]:
        names: list[str] = []
        for page in elb.get_paginator("describe_load_balancers").paginate():
            names += [lb["LoadBalancerName"] for lb in page.get("LoadBalancerDescriptions", [])
                      if any(i["InstanceId"] == instance_id for i in lb.get("Instances", []))]
        return names

    def group() -> dict[str, Any]:
        if not asg:
            return {}
        resp = clients.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[asg])
        groups = resp.get("AutoScalingGroups", [])
        return groups[0] if groups else {}

    arns, elbs, own = parallel(lambda f: f(), [target_groups, classic, group])

    def registered(arn: str) -> list[dict[str, Any]]:
        resp = elbv2.describe_target_health(TargetGroupArn=arn)
        return [{"arn": arn, "port": d["Target"].get("Port")}
                for d in resp.get("TargetHealthDescriptions", [])
                if d["Target"]["Id"] == instance_id
                and d.get("TargetHealth", {}).get("State") not in DEREGISTERED]

    regs = [r for rs in parallel(registered, arns) for r in rs]
    seen = {r["arn"] for r in regs}
    regs += [{"arn": arn, "port": None} for arn in own.get("TargetGroupARNs", [])
             if arn not in seen]
    for reg in regs:
        reg["kind"] = kinds.get(reg["arn"], "alb")
    elbs += [n for n in own.get("LoadBalancerNames", []) if n not in elbs]
    return {"target_groups": regs, "classic_elbs": elbs}


def _below_minimum(exc: ClientError) -> bool:
    err = describe_error(exc)
    return err.code == "ValidationError" and ("min-size" in err.message.lower()
                                              or "min size" in err.message.lower())


def balancer_kind(protocol: str | None) -> str:
    """A target group's load balancer by its protocol: NLB, Gateway Load Balancer or ALB."""
    if protocol in ("TCP", "UDP", "TCP_UDP", "TLS"):
        return "nlb"
    if protocol == "GENEVE":
        return "gwlb"
    return "alb"


def _target(instance_id: str, registration: dict[str, Any]) -> dict[str, Any]:
    port = registration.get("port")
    return {"Id": instance_id, "Port": port} if port else {"Id": instance_id}


class DetachFromAutoScaling(Action):
    name = "detach-from-auto-scaling"
    description = ("detach from its Auto Scaling group (and, best effort, its load "
                   "balancers), so that the group does not terminate it once its network "
                   "is cut")
    permissions = (
        "autoscaling:DescribeAutoScalingInstances",
        "autoscaling:DetachInstances",
        "autoscaling:AttachInstances",
        "elasticloadbalancing:DescribeTargetHealth",
        "elasticloadbalancing:DeregisterTargets",
        "elasticloadbalancing:RegisterTargets",
        "elasticloadbalancing:DescribeLoadBalancers",
        "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
        "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
    )

    def _membership(self, ctx: StepContext) -> dict[str, Any] | None:
        """Read now; if the read still fails after backoff, the card's facts decide."""
        def read() -> dict[str, Any] | None:
            try:
                return membership(ctx.clients, ctx.target.resource_id)
            except Exception as exc:
                known = ctx.target.facts.get("asg")
                ctx.memo["read_error"] = describe_error(exc).code
                return {"name": known, "state": "unknown"} if known else None

        return ctx.remember("asg", read)

    def check(self, ctx: StepContext) -> bool:
        facts = ctx.target.facts
        return (self._membership(ctx) is None and not facts.get("target_groups")
                and not facts.get("classic_elbs"))

    def observe_early(self, ctx: StepContext) -> dict[str, Any] | None:
        """From the card's look-up: the group and the instance's lifecycle state read then,
        and its load balancers. A state that cannot be detached as it is (launching,
        entering standby) is read again after the click instead."""
        facts = ctx.target.facts
        state = facts.get("asg_state")
        if facts.get("asg") and state not in DETACHABLE:
            return None
        return {"asg": facts.get("asg"), "state": state,
                "target_groups": list(facts.get("target_groups") or []),
                "classic_elbs": list(facts.get("classic_elbs") or [])}

    def in_place(self, captured: dict[str, Any]) -> bool:
        return not (captured.get("asg") or captured.get("target_groups")
                    or captured.get("classic_elbs"))

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        member = self._membership(ctx)
        facts = ctx.target.facts
        return {"asg": member["name"] if member else None,
                "state": member["state"] if member else None,
                "target_groups": list(facts.get("target_groups") or []),
                "classic_elbs": list(facts.get("classic_elbs") or [])}

    def _detach(self, ctx: StepContext, group: str, state: str) -> str:
        instance_id = ctx.target.resource_id
        if state.startswith(TERMINATING_PREFIX):
            # Nothing stops a group's termination: the cut goes on, the responder knows.
            return (f"{group} is already terminating it ({state}); it cannot be detached "
                    "— its evidence is at risk")
        if state.startswith(LAUNCHING_PREFIX):
            raise StepFailed("LifecycleState", f"still launching in {group} ({state}): Auto "
                             "Scaling cannot detach it before it is InService; retry then, "
                             "or complete or abandon its lifecycle action")
        decrement = bool(ctx.options.get("asg_decrement", False))

        autoscaling = ctx.clients.client("autoscaling", cut=True)  # retried here only

        at_minimum: list[str] = []

        def detach() -> None:
            lower = decrement and not at_minimum
            try:
                autoscaling.detach_instances(
                    InstanceIds=[instance_id], AutoScalingGroupName=group,
                    ShouldDecrementDesiredCapacity=lower)
            except ClientError as exc:
                # A group at its minimum refuses to lower its desired capacity ("has
                # min-size=1 … and desired-size=1. To detach 1 instance, please update the
                # AutoScalingGroup sizes"): detach without lowering it, and say so. Changing
                # the group's minimum is not Cordon's to do.
                if not lower or not _below_minimum(exc):
                    raise
                at_minimum.append(describe_error(exc).message)
                autoscaling.detach_instances(
                    InstanceIds=[instance_id], AutoScalingGroupName=group,
                    ShouldDecrementDesiredCapacity=False)

        if state in SETTLING:
            # EnteringStandby: a moment later it is Standby, which can be detached.
            for delay in SETTLE_RETRY.delays():
                time.sleep(delay)
                now = membership(ctx.clients, instance_id)
                if now is None or now["state"] in DETACHABLE:
                    break
        try:
            READ_RETRY.call(detach)
        except Exception as exc:
            # A detach whose answer was lost, and whose retry is then refused ("not part
            # of the group"), did land: ask the group before calling it a failure.
            try:
                landed = membership(ctx.clients, instance_id) is None
            except Exception:
                landed = False
            if not landed:
                err = describe_error(exc)
                raise StepFailed(err.code, f"could not detach from {group} ({state}): "
                                 f"{err.message}") from exc
        if at_minimum:
            return (f"detached from {group} without lowering its desired capacity: the group "
                    "is at its minimum size, so it launches a replacement")
        then = "desired capacity lowered" if decrement else "the group launches a replacement"
        return f"detached from {group} ({then})"

    def _deregister(self, ctx: StepContext, captured: dict[str, Any]) -> list[str]:
        """Best effort: what could not be deregistered, with its error code."""
        instance_id = ctx.target.resource_id
        elbv2, elb = ctx.clients.client("elbv2"), ctx.clients.client("elb")
        calls: list[tuple[str, Callable[[], Any]]] = []
        for reg in captured["target_groups"]:
            calls.append((reg["arn"].rsplit(":", 1)[-1], partial(
                elbv2.deregister_targets, TargetGroupArn=reg["arn"],
                Targets=[_target(instance_id, reg)])))
        for name in captured["classic_elbs"]:
            calls.append((name, partial(elb.deregister_instances_from_load_balancer,
                                        LoadBalancerName=name,
                                        Instances=[{"InstanceId": instance_id}])))

        def one(item: tuple[str, Callable[[], Any]]) -> str | None:
            # Best effort, beside the detach on the path to the cut: botocore's own
            # retries only, no backoff of ours to wait for.
            try:
                item[1]()
            except Exception as exc:
                return f"{item[0]} ({describe_error(exc).code})"
            return None

        return [e for e in parallel(one, calls) if e]

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        jobs: list[Callable[[], Any]] = [lambda: self._deregister(ctx, captured)]
        if captured["asg"]:
            jobs.append(lambda: self._detach(ctx, captured["asg"], captured["state"] or ""))
        results = parallel(lambda job: job(), jobs)
        errors = results[0]
        parts = [results[1]] if captured["asg"] else []
        n = len(captured["target_groups"]) + len(captured["classic_elbs"])
        if n:
            parts.append(f"deregistered from {n - len(errors)} of {n} load balancer(s)"
                         + (f"; not from {', '.join(errors)} (best effort)" if errors else ""))
        if ctx.memo.get("read_error"):
            parts.append(f"membership read from the card ({ctx.memo['read_error']} now)")
        return Outcome("; ".join(parts), {"deregistration_errors": errors})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        elbv2 = ctx.clients.client("elbv2")

        def still(reg: dict[str, Any]) -> bool:
            try:
                resp = elbv2.describe_target_health(TargetGroupArn=reg["arn"],
                                                    Targets=[_target(ctx.target.resource_id,
                                                                     reg)])
            except Exception:
                return False  # best effort: reported by apply
            return any(d.get("TargetHealth", {}).get("State") not in DEREGISTERED
                       for d in resp.get("TargetHealthDescriptions", []))

        def member() -> dict[str, Any] | Exception | None:
            try:
                return membership(ctx.clients, ctx.target.resource_id)
            except Exception as exc:
                return exc

        # The group and the target groups, read in one round trip.
        now, registered = both(member, lambda: parallel(still, captured["target_groups"]))
        if isinstance(now, Exception):
            # The detach was accepted; a read that stays throttled must not stop the cut.
            return f"membership not re-read ({describe_error(now).code}); the detach was accepted"
        if now is not None and not now["state"].startswith(TERMINATING_PREFIX):
            raise VerificationFailed(f"still in {now['name']} ({now['state']})")
        left = [r["arn"].rsplit(":", 1)[-1] for r, s in
                zip(captured["target_groups"], registered, strict=True) if s]
        seen = "in no Auto Scaling group"
        if left:
            seen += f"; still registered in {', '.join(left)} (best effort)"
        elif captured["target_groups"]:
            seen += "; in none of its target groups"
        return seen

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
        if captured.get("asg") and not str(captured.get("state") or "").startswith(
                TERMINATING_PREFIX):
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

