"""Preserve what an investigator needs: the instance as AWS describes it, its console,
snapshots of every volume and an image — all tagged with the incident."""

from __future__ import annotations

import base64
import json
from typing import Any

from handlers.aws import describe_error, parallel
from handlers.base import (
    Action,
    Artifact,
    Observation,
    Outcome,
    StepContext,
    StepFailed,
    VerificationFailed,
    register,
)
from handlers.ec2_lookup import describe_instance


def evidence_tags(ctx: StepContext, kind: str) -> list[dict[str, str]]:
    return [
        {"Key": "cordon:incident", "Value": ctx.target.incident_id},
        {"Key": "cordon:instance", "Value": ctx.target.resource_id},
        {"Key": "cordon:evidence", "Value": kind},
        {"Key": "cordon:managed", "Value": "true"},
        {"Key": "Name", "Value": f"{ctx.target.incident_id} {ctx.target.resource_id}"},
    ]


def _incident_filter(ctx: StepContext) -> list[dict[str, Any]]:
    return [{"Name": "tag:cordon:incident", "Values": [ctx.target.incident_id]},
            {"Name": "tag:cordon:instance", "Values": [ctx.target.resource_id]}]


def _volumes(ctx: StepContext) -> list[str]:
    inst = describe_instance(ctx.clients, ctx.target.resource_id)
    if inst is None:
        raise StepFailed("InvalidInstanceID.NotFound", f"{ctx.target.resource_id} is gone")
    return [m["Ebs"]["VolumeId"] for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m]


@register
class CaptureEvidence(Observation):
    name = "capture-evidence"
    description = "the instance's description, console output and screenshot, the prior state"
    permissions = ("ec2:DescribeInstances", "ec2:GetConsoleOutput", "ec2:GetConsoleScreenshot")

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ec2 = ctx.clients.ec2
        instance_id = ctx.target.resource_id
        prefix = f"{ctx.target.incident_id}-{instance_id}"
        notes: list[str] = []

        def describe() -> Artifact:
            resp = ec2.describe_instances(InstanceIds=[instance_id])
            resp.pop("ResponseMetadata", None)
            return Artifact(f"{prefix}-describe-instances.json",
                            json.dumps(resp, indent=2, default=str).encode(), "application/json")

        def console() -> Artifact | None:
            try:
                out = ec2.get_console_output(InstanceId=instance_id, Latest=True).get("Output")
            except Exception as exc:
                try:  # Latest is not supported on every instance type
                    out = ec2.get_console_output(InstanceId=instance_id).get("Output")
                except Exception:
                    notes.append(f"console output unavailable ({describe_error(exc).code})")
                    return None
            text = out or ""
            try:
                text = base64.b64decode(text).decode("utf-8", "replace") if text else ""
            except ValueError:
                pass
            return Artifact(f"{prefix}-console.txt", text.encode(), "text/plain")

        def screenshot() -> Artifact | None:
            try:
                data = ec2.get_console_screenshot(InstanceId=instance_id, WakeUp=False)
            except Exception as exc:
                notes.append(f"screenshot unavailable ({describe_error(exc).code})")
                return None
            return Artifact(f"{prefix}-screenshot.jpg", base64.b64decode(data["ImageData"]),
                            "image/jpeg")

        made = parallel(lambda job: job(), [describe, console, screenshot])
        prior = {name: step.get("captured") for name, step in ctx.history.items()
                 if step.get("captured") is not None}
        made.append(Artifact(f"{prefix}-prior-state.json",
                             json.dumps(prior, indent=2, default=str).encode(),
                             "application/json"))
        artifacts = [a for a in made if a is not None]
        summary = ", ".join(a.name.removeprefix(prefix + "-") for a in artifacts)
        if notes:
            summary += "; " + "; ".join(notes) + " — going on"
        return Outcome(summary, {"files": [a.name for a in artifacts], "notes": notes},
                       artifacts)

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        if not outcome.artifacts or not outcome.artifacts[0].content:
            raise VerificationFailed("no description was captured")
        return f"{len(outcome.artifacts)} files"


@register
class SnapshotVolumes(Action):
    name = "snapshot-volumes"
    description = "a snapshot of every attached EBS volume, tagged with the incident"
    permissions = ("ec2:DescribeInstances", "ec2:DescribeSnapshots", "ec2:CreateSnapshots",
                   "ec2:CreateTags")
    reversible = False

    def _existing(self, ctx: StepContext) -> list[dict[str, Any]]:
        resp = ctx.clients.ec2.describe_snapshots(OwnerIds=["self"],
                                                  Filters=_incident_filter(ctx))
        return list(resp.get("Snapshots", []))

    def check(self, ctx: StepContext) -> bool:
        volumes, snaps = parallel(lambda f: f(ctx), [_volumes, self._existing])
        ctx.memo["volumes"] = volumes
        done = {s.get("VolumeId") for s in snaps}
        return bool(volumes) and set(volumes) <= done

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return {"volumes": ctx.memo.get("volumes") or _volumes(ctx)}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        if not captured["volumes"]:
            return Outcome("no EBS volumes to snapshot", {"snapshots": []})
        resp = ctx.clients.ec2.create_snapshots(
            InstanceSpecification={"InstanceId": ctx.target.resource_id,
                                   "ExcludeBootVolume": False},
            Description=f"Cordon {ctx.target.incident_id}: evidence of {ctx.target.resource_id}",
            TagSpecifications=[{"ResourceType": "snapshot",
                                "Tags": evidence_tags(ctx, "snapshot")}],
        )
        snaps = [{"id": s["SnapshotId"], "volume": s.get("VolumeId"), "state": s.get("State")}
                 for s in resp.get("Snapshots", [])]
        return Outcome(", ".join(f"{s['id']} ({s['volume']})" for s in snaps),
                       {"snapshots": snaps})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        ids = [s["id"] for s in outcome.details["snapshots"]]
        if not ids:
            return "nothing to snapshot"
        found = ctx.clients.ec2.describe_snapshots(SnapshotIds=ids).get("Snapshots", [])
        states = {s["SnapshotId"]: s["State"] for s in found}
        missing = set(captured["volumes"]) - {s.get("VolumeId") for s in found}
        if missing or any(state == "error" for state in states.values()):
            raise VerificationFailed(f"snapshots missing or failed: {sorted(missing)} {states}")
        return ", ".join(f"{i} {s}" for i, s in states.items())


@register
class CreateImage(Action):
    name = "create-image"
    description = "an AMI of the instance, without rebooting it, tagged with the incident"
    permissions = ("ec2:CreateImage", "ec2:DescribeImages", "ec2:CreateTags")
    reversible = False

    def _existing(self, ctx: StepContext) -> list[dict[str, Any]]:
        resp = ctx.clients.ec2.describe_images(Owners=["self"], Filters=_incident_filter(ctx))
        return list(resp.get("Images", []))

    def check(self, ctx: StepContext) -> bool:
        ctx.memo["images"] = self._existing(ctx)
        return bool(ctx.memo["images"])

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return {}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        name = f"cordon-{ctx.target.incident_id}-{ctx.target.resource_id}"
        ec2 = ctx.clients.ec2
        resp = ec2.create_image(
            InstanceId=ctx.target.resource_id, Name=name, NoReboot=True,
            Description=f"Cordon {ctx.target.incident_id}: evidence (taken without reboot)",
            TagSpecifications=[{"ResourceType": "image", "Tags": evidence_tags(ctx, "image")}],
        )
        image = resp["ImageId"]
        # The image's own snapshots carry the incident too, where EC2 already lists them.
        found = ec2.describe_images(ImageIds=[image]).get("Images", [])
        snaps = [m["Ebs"]["SnapshotId"] for img in found for m in img.get("BlockDeviceMappings", [])
                 if m.get("Ebs", {}).get("SnapshotId")]
        if snaps:
            ec2.create_tags(Resources=snaps, Tags=evidence_tags(ctx, "image-snapshot"))
        return Outcome(f"{image} ({name}), no reboot", {"image": image, "image_snapshots": snaps})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        image = outcome.details["image"]
        found = ctx.clients.ec2.describe_images(ImageIds=[image]).get("Images", [])
        if not found or found[0].get("State") in ("failed", "error", "invalid"):
            raise VerificationFailed(f"{image} is not being created")
        return f"{image} {found[0].get('State')}"


def snapshot_states(clients: Any, snapshot_ids: list[str]) -> dict[str, str]:
    """For the follow-up: each snapshot's state (pending, completed, error)."""
    if not snapshot_ids:
        return {}
    found = clients.ec2.describe_snapshots(SnapshotIds=snapshot_ids).get("Snapshots", [])
    return {s["SnapshotId"]: s["State"] for s in found}
