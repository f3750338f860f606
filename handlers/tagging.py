"""Tag the instance with the incident, so that everyone who looks at it knows."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from handlers.base import Action, Outcome, StepContext, VerificationFailed

_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")


def tag_value(text: str) -> str:
    """EC2 tag values: at most 256 characters, no control characters."""
    return _UNSAFE.sub(" ", text).strip()[:256]


def incident_tags(ctx: StepContext) -> dict[str, str]:
    t = ctx.target
    tags = {
        "cordon:incident": t.incident_id,
        "cordon:status": str(ctx.options.get("status", "contained")),
        "cordon:requested-by": t.requester,
        "cordon:approved-by": t.approver,
    }
    if t.reason:
        tags["cordon:reason"] = tag_value(t.reason)
    return {k: v for k, v in tags.items() if v}


def _current(ctx: StepContext, keys: list[str]) -> dict[str, str]:
    resp = ctx.clients.ec2.describe_tags(
        Filters=[
            {"Name": "resource-id", "Values": [ctx.target.resource_id]},
            {"Name": "key", "Values": keys},
        ]
    )
    return {t["Key"]: t["Value"] for t in resp.get("Tags", [])}


class TagInstance(Action):
    name = "tag-instance"
    description = "tag the instance with the incident, its status, who asked, who approved, why"
    permissions = ("ec2:CreateTags", "ec2:DeleteTags", "ec2:DescribeTags")

    def _observe(self, ctx: StepContext) -> dict[str, str]:
        return ctx.remember("tags", lambda: _current(
            ctx, [*incident_tags(ctx), "cordon:contained-at"]))

    def check(self, ctx: StepContext) -> bool:
        current = self._observe(ctx)
        return all(current.get(k) == v for k, v in incident_tags(ctx).items())

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        current = self._observe(ctx)
        keys = [*incident_tags(ctx), "cordon:contained-at"]
        return {"tags": {k: current.get(k) for k in keys}}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        tags = dict(incident_tags(ctx))
        tags["cordon:contained-at"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ctx.clients.ec2.create_tags(
            Resources=[ctx.target.resource_id],
            Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        )
        return Outcome(
            f"cordon:incident={ctx.target.incident_id}, cordon:status={tags['cordon:status']}, "
            "requester, approver, reason, time",
            {"tags": tags},
        )

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        want = outcome.details["tags"]
        got = _current(ctx, list(want))
        wrong = [k for k, v in want.items() if got.get(k) != v]
        if wrong:
            raise VerificationFailed(f"tags not set: {', '.join(wrong)}")
        return f"{len(want)} tags present"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return "the instance's cordon:* tags back to what they were"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        prior: dict[str, str | None] = captured["tags"]
        restore = [{"Key": k, "Value": v} for k, v in prior.items() if v is not None]
        remove = [{"Key": k} for k, v in prior.items() if v is None]
        if restore:
            ctx.clients.ec2.create_tags(Resources=[ctx.target.resource_id], Tags=restore)
        if remove:
            ctx.clients.ec2.delete_tags(Resources=[ctx.target.resource_id], Tags=remove)
        return Outcome(f"{len(restore)} tags restored, {len(remove)} removed")


def set_status_tag(ctx: StepContext, status: str, extra: dict[str, str] | None = None) -> None:
    tags = {"cordon:incident": ctx.target.incident_id, "cordon:status": status, **(extra or {})}
    ctx.clients.ec2.create_tags(Resources=[ctx.target.resource_id],
                                Tags=[{"Key": k, "Value": tag_value(v)} for k, v in tags.items()])


class MarkReleased(Action):
    name = "mark-released"
    description = "tag the instance cordon:status=released"
    permissions = ("ec2:CreateTags", "ec2:DescribeTags")
    reversible = False

    def check(self, ctx: StepContext) -> bool:
        return _current(ctx, ["cordon:status"]).get("cordon:status") == "released"

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return {}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        set_status_tag(ctx, "released", {"cordon:released-by": ctx.target.approver,
                                         "cordon:release": ctx.options.get("release_id", "")})
        return Outcome("cordon:status=released")

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        if not self.check(ctx):
            raise VerificationFailed("cordon:status is not released")
        return "cordon:status=released"
