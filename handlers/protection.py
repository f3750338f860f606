"""Protect the evidence before anything else: the instance must not be terminated or
stopped (memory and disks are evidence), and its volumes must outlive it.

What real AWS does that moto does not show: a Spot Instance cannot take termination
protection (EC2 answers UnsupportedOperation), and some instance types or lifecycles
refuse stop protection or a shutdown behaviour; such a protection is skipped and the
thread says so, instead of failing the step — the other protections still matter."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from handlers.base import Action, Outcome, StepContext, StepFailed, VerificationFailed
from handlers.ec2_lookup import describe_instance
from handlers.fanout import parallel
from handlers.retry import describe_error

ATTRIBUTES = {
    "disableApiTermination": "DisableApiTermination",
    "disableApiStop": "DisableApiStop",
    "instanceInitiatedShutdownBehavior": "InstanceInitiatedShutdownBehavior",
}
PROTECTED = {"disableApiTermination": True, "disableApiStop": True,
             "instanceInitiatedShutdownBehavior": "stop"}


def read_protection(ctx: StepContext) -> dict[str, Any]:
    """The three attributes and each EBS volume's DeleteOnTermination, in one round trip."""
    ec2 = ctx.clients.ec2
    instance_id = ctx.target.resource_id

    def attribute(name: str) -> tuple[str, Any]:
        resp = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute=name)
        return name, resp.get(ATTRIBUTES[name], {}).get("Value")

    def volumes() -> tuple[str, Any]:
        inst = describe_instance(ctx.clients, instance_id)
        if inst is None:
            raise StepFailed("InvalidInstanceID.NotFound", f"{instance_id} no longer exists")
        return "volumes", [
            {"device": m["DeviceName"], "volume_id": m["Ebs"].get("VolumeId"),
             "delete_on_termination": bool(m["Ebs"].get("DeleteOnTermination"))}
            for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m
        ]

    jobs = [lambda n=n: attribute(n) for n in ATTRIBUTES] + [volumes]
    return dict(parallel(lambda job: job(), jobs))


# The answers of an attribute the instance does not support.
UNSUPPORTED = {"UnsupportedOperation", "InvalidParameterCombination", "OperationNotPermitted"}


def _is_protected(state: dict[str, Any], skipped: frozenset[str] = frozenset()) -> bool:
    return all(state.get(k) == v for k, v in PROTECTED.items() if k not in skipped) and not any(
        v["delete_on_termination"] for v in state.get("volumes", []))


def known_unsupported(facts: dict[str, Any]) -> dict[str, str]:
    """Protections this instance cannot take, known from the card's look-up."""
    if facts.get("lifecycle") == "spot":
        return {"disableApiTermination": "a Spot Instance cannot take termination protection"}
    return {}


class ProtectEvidence(Action):
    name = "protect-evidence"
    description = ("termination and stop protection, shutdown behaviour `stop`, volumes kept "
                   "on termination")
    permissions = ("ec2:DescribeInstances", "ec2:DescribeInstanceAttribute",
                   "ec2:ModifyInstanceAttribute")

    def _observe(self, ctx: StepContext) -> dict[str, Any]:
        return ctx.remember("state", lambda: read_protection(ctx))

    def check(self, ctx: StepContext) -> bool:
        return _is_protected(self._observe(ctx))

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return dict(self._observe(ctx))

    def observe_early(self, ctx: StepContext) -> dict[str, Any] | None:
        """Read when the card is made: the protections are then set in the first round
        trip after the click, and the prior values are what a release restores."""
        return dict(read_protection(ctx))

    def in_place(self, captured: dict[str, Any]) -> bool:
        return _is_protected(captured)

    def _set(self, ctx: StepContext, state: dict[str, Any],
             skip: dict[str, str] | None = None) -> dict[str, str]:
        """Set the attributes; returns those the instance does not support, and why."""
        ec2 = ctx.clients.ec2
        instance_id = ctx.target.resource_id
        unsupported = dict(skip or {})
        calls = {
            "disableApiTermination": lambda: ec2.modify_instance_attribute(
                InstanceId=instance_id,
                DisableApiTermination={"Value": bool(state["disableApiTermination"])}),
            "disableApiStop": lambda: ec2.modify_instance_attribute(
                InstanceId=instance_id, DisableApiStop={"Value": bool(state["disableApiStop"])}),
            "instanceInitiatedShutdownBehavior": lambda: ec2.modify_instance_attribute(
                InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior",
                Value=state["instanceInitiatedShutdownBehavior"] or "stop"),
        }
        volumes = state.get("volumes", [])
        if volumes:
            calls["volumes"] = lambda: ec2.modify_instance_attribute(
                InstanceId=instance_id,
                BlockDeviceMappings=[{"DeviceName": v["device"],
                                      "Ebs": {"DeleteOnTermination": v["delete_on_termination"]}}
                                     for v in volumes])

        def one(name: str) -> None:
            try:
                calls[name]()
            except ClientError as exc:
                err = describe_error(exc)
                if err.code not in UNSUPPORTED or name == "volumes":
                    raise
                unsupported[name] = f"{err.code}: {err.message}"

        parallel(one, [n for n in calls if n not in unsupported])
        return unsupported

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        wanted = {**PROTECTED, "volumes": [{**v, "delete_on_termination": False}
                                           for v in captured.get("volumes", [])]}
        unsupported = self._set(ctx, wanted, known_unsupported(ctx.target.facts))
        vols = ", ".join(v["volume_id"] for v in captured.get("volumes", [])) or "no EBS volumes"
        done = [label for name, label in (
            ("disableApiTermination", "termination protection on"),
            ("disableApiStop", "stop protection on"),
            ("instanceInitiatedShutdownBehavior", "shutdown behaviour stop"))
            if name not in unsupported]
        said = f"{', '.join(done)}; kept on termination: {vols}"
        if unsupported:
            said += "; not supported by this instance, skipped: " + "; ".join(
                f"{name} ({why})" for name, why in unsupported.items())
        return Outcome(said, {"unsupported": unsupported})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        state = read_protection(ctx)
        skipped = frozenset(outcome.details.get("unsupported") or {})
        if not _is_protected(state, skipped):
            raise VerificationFailed(f"protection not in place: {state}")
        if skipped:
            return f"protected, except what the instance does not support: {', '.join(skipped)}"
        return "termination/stop protection on, shutdown=stop, DeleteOnTermination=false"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        def on_off(value: Any) -> str:
            return "on" if value is True else "off" if value is False else "as it was"

        return (f"termination protection {on_off(captured.get('disableApiTermination'))}, "
                f"stop protection {on_off(captured.get('disableApiStop'))}, shutdown "
                f"behaviour {captured.get('instanceInitiatedShutdownBehavior') or 'as it was'}"
                ", DeleteOnTermination as it was")

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        self._set(ctx, captured, known_unsupported(ctx.target.facts))
        return Outcome("protections and DeleteOnTermination back to their recorded values")
