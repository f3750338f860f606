"""Preserve what an investigator needs: the instance as AWS describes it, its console,
snapshots of every volume and an image — all tagged with the incident."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from handlers.base import (
    Action,
    Artifact,
    Observation,
    Outcome,
    StepContext,
    StepFailed,
    VerificationFailed,
)
from handlers.ec2_lookup import describe_instance
from handlers.fanout import parallel
from handlers.retry import Backoff, in_words, is_retryable


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


def _volumes(ctx: StepContext) -> tuple[list[str], str | None]:
    """The instance's EBS volumes, and which of them is its root volume."""
    inst = describe_instance(ctx.clients, ctx.target.resource_id)
    if inst is None:
        raise StepFailed("InvalidInstanceID.NotFound", f"{ctx.target.resource_id} is gone")
    maps = [m for m in inst.get("BlockDeviceMappings", []) if "Ebs" in m]
    root = next((m["Ebs"]["VolumeId"] for m in maps
                 if m.get("DeviceName") == inst.get("RootDeviceName")), None)
    return [m["Ebs"]["VolumeId"] for m in maps], root


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
                    notes.append(f"console output unavailable ({in_words(exc)})")
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
                notes.append(f"screenshot unavailable ({in_words(exc)})")
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


# Creating evidence must never happen twice because an answer was lost: the create
# calls go out without botocore's own retries, and before each attempt Cordon looks for
# what an earlier attempt made, by the incident's tag (applied at creation).
CREATE_RETRY = Backoff(attempts=5, base=0.5, cap=4.0)


def _create_once(find: Callable[[], Any], create: Callable[[Any], Any]) -> Any:
    """find() what exists; create(found) what is missing; again after a pause when the
    create failed in a way that may have landed (throttled, 5xx, answer lost)."""
    delays = CREATE_RETRY.delays()
    while True:
        found = CREATE_RETRY.call(find)  # a look-up only: retried as any read
        try:
            return create(found)
        except Exception as exc:
            if not delays or not is_retryable(exc):
                raise
        time.sleep(delays.pop(0))


class SnapshotVolumes(Action):
    name = "snapshot-volumes"
    description = "a snapshot of every attached EBS volume, tagged with the incident"
    permissions = ("ec2:DescribeInstances", "ec2:DescribeSnapshots", "ec2:CreateSnapshots",
                   "ec2:CreateTags")
    reversible = False

    def _existing(self, ctx: StepContext) -> list[dict[str, Any]]:
        # Only this step's snapshots: the image's own carry the incident too.
        resp = ctx.clients.ec2.describe_snapshots(OwnerIds=["self"], Filters=[
            *_incident_filter(ctx), {"Name": "tag:cordon:evidence", "Values": ["snapshot"]}])
        return [s for s in resp.get("Snapshots", []) if s.get("State") != "error"]

    def check(self, ctx: StepContext) -> bool:
        # Always apply: it finds what an earlier attempt made and records its ids.
        return False

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        volumes, root = _volumes(ctx)
        return {"volumes": volumes, "root": root}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        volumes = captured["volumes"]
        if not volumes:
            return Outcome("no EBS volumes to snapshot", {"snapshots": []})
        ec2 = ctx.clients.client("ec2", cut=True)
        root = captured.get("root")

        def create(existing: list[dict[str, Any]]) -> list[dict[str, Any]]:
            have = {s.get("VolumeId") for s in existing}
            missing = [v for v in volumes if v not in have]
            if not missing:
                return existing
            spec: dict[str, Any] = {"InstanceId": ctx.target.resource_id,
                                    "ExcludeBootVolume": root not in missing}
            done_data = [v for v in volumes if v not in missing and v != root]
            if done_data:
                spec["ExcludeDataVolumeIds"] = done_data
            resp = ec2.create_snapshots(
                InstanceSpecification=spec,
                Description=f"Cordon {ctx.target.incident_id}: evidence of "
                            f"{ctx.target.resource_id}",
                TagSpecifications=[{"ResourceType": "snapshot",
                                    "Tags": evidence_tags(ctx, "snapshot")}],
            )
            return [*existing, *resp.get("Snapshots", [])]

        earlier: set[str] = set()

        def find() -> list[dict[str, Any]]:
            found = self._existing(ctx)
            earlier.update(s["SnapshotId"] for s in found)
            return found

        result = _create_once(find, create)
        snaps = [{"id": s["SnapshotId"], "volume": s.get("VolumeId"), "state": s.get("State"),
                  "earlier": s["SnapshotId"] in earlier} for s in result]
        said = ", ".join(f"{s['id']} ({s['volume']}"
                         f"{', made by an earlier attempt' if s['earlier'] else ''})"
                         for s in snaps)
        return Outcome(said, {"snapshots": snaps})

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


class CreateImage(Action):
    name = "create-image"
    description = "an AMI of the instance, without rebooting it, tagged with the incident"
    permissions = ("ec2:CreateImage", "ec2:DescribeImages", "ec2:CreateTags")
    reversible = False

    def _existing(self, ctx: StepContext) -> list[dict[str, Any]]:
        resp = ctx.clients.ec2.describe_images(Owners=["self"], Filters=_incident_filter(ctx))
        return [i for i in resp.get("Images", []) if i.get("State") not in ("failed", "error")]

    def check(self, ctx: StepContext) -> bool:
        # Always apply: it finds an image an earlier attempt made and records its id.
        return False

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return {}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        name = f"cordon-{ctx.target.incident_id}-{ctx.target.resource_id}"
        ec2 = ctx.clients.client("ec2", cut=True)

        def create(found: list[dict[str, Any]]) -> tuple[str, bool]:
            if found:
                return str(found[0]["ImageId"]), True
            resp = ec2.create_image(
                InstanceId=ctx.target.resource_id, Name=name, NoReboot=True,
                Description=f"Cordon {ctx.target.incident_id}: evidence (taken without reboot)",
                # Tagged at creation: what a retry looks for. (AWS also takes a
                # "snapshot" specification here for the image's snapshots; moto's server
                # does not implement it, so they are tagged just after.)
                TagSpecifications=[{"ResourceType": "image",
                                    "Tags": evidence_tags(ctx, "image")}],
            )
            return str(resp["ImageId"]), False

        image, earlier = _create_once(lambda: self._existing(ctx), create)
        found = ctx.clients.ec2.describe_images(ImageIds=[image]).get("Images", [])
        snaps = [m["Ebs"]["SnapshotId"] for img in found for m in img.get("BlockDeviceMappings", [])
                 if m.get("Ebs", {}).get("SnapshotId")]
        if snaps:  # cordon:* keys only: the policy allows no other tag after creation
            ctx.clients.ec2.create_tags(Resources=snaps, Tags=[
                t for t in evidence_tags(ctx, "image-snapshot") if t["Key"].startswith("cordon:")])
        return Outcome(f"{image} ({name}), no reboot"
                       + (" — made by an earlier attempt" if earlier else ""),
                       {"image": image, "image_snapshots": snaps, "earlier": earlier})

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
