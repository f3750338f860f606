"""Protect the evidence before anything else: the instance must not be terminated or
stopped (memory and disks are evidence), and its volumes must outlive it."""

from __future__ import annotations

from typing import Any

from handlers.aws import parallel
from handlers.base import Action, Outcome, StepContext, StepFailed, VerificationFailed, register
from handlers.ec2_lookup import describe_instance

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


def _is_protected(state: dict[str, Any]) -> bool:
    return all(state.get(k) == v for k, v in PROTECTED.items()) and not any(
        v["delete_on_termination"] for v in state.get("volumes", []))


@register
class ProtectEvidence(Action):
    name = "protect-evidence"
    description = ("termination and stop protection, shutdown behaviour `stop`, volumes kept "
                   "on termination")
    permissions = ("ec2:DescribeInstances", "ec2:DescribeInstanceAttribute",
                   "ec2:ModifyInstanceAttribute")

    def _observe(self, ctx: StepContext) -> dict[str, Any]:
        if "state" not in ctx.memo:
            ctx.memo["state"] = read_protection(ctx)
        state: dict[str, Any] = ctx.memo["state"]
        return state

    def check(self, ctx: StepContext) -> bool:
        return _is_protected(self._observe(ctx))

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return dict(self._observe(ctx))

    def _set(self, ctx: StepContext, state: dict[str, Any]) -> None:
        ec2 = ctx.clients.ec2
        instance_id = ctx.target.resource_id
        calls = [
            lambda: ec2.modify_instance_attribute(
                InstanceId=instance_id,
                DisableApiTermination={"Value": bool(state["disableApiTermination"])}),
            lambda: ec2.modify_instance_attribute(
                InstanceId=instance_id, DisableApiStop={"Value": bool(state["disableApiStop"])}),
            lambda: ec2.modify_instance_attribute(
                InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior",
                Value=state["instanceInitiatedShutdownBehavior"] or "stop"),
        ]
        volumes = state.get("volumes", [])
        if volumes:
            calls.append(lambda: ec2.modify_instance_attribute(
                InstanceId=instance_id,
                BlockDeviceMappings=[{"DeviceName": v["device"],
                                      "Ebs": {"DeleteOnTermination": v["delete_on_termination"]}}
                                     for v in volumes]))
        parallel(lambda call: call(), calls)

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        wanted = {**PROTECTED, "volumes": [{**v, "delete_on_termination": False}
                                           for v in captured.get("volumes", [])]}
        self._set(ctx, wanted)
        vols = ", ".join(v["volume_id"] for v in captured.get("volumes", [])) or "no EBS volumes"
        return Outcome(f"termination and stop protection on, shutdown behaviour stop; "
                       f"kept on termination: {vols}")

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        state = read_protection(ctx)
        if not _is_protected(state):
            raise VerificationFailed(f"protection not in place: {state}")
        return "termination/stop protection on, shutdown=stop, DeleteOnTermination=false"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return (f"termination protection {captured.get('disableApiTermination')}, stop "
                f"protection {captured.get('disableApiStop')}, shutdown behaviour "
                f"{captured.get('instanceInitiatedShutdownBehavior')}, DeleteOnTermination "
                "as it was")

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        self._set(ctx, captured)
        return Outcome("protections and DeleteOnTermination back to their recorded values")
