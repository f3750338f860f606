"""An incident's record for the post-mortem and for auditors: a Markdown timeline and
the same as JSON — every decision (refused clicks included), every step with its
status, timing, summary and what its verify saw, the lifecycle's timestamps and
durations, the evidence files with their SHA-256, the snapshot and image ids, and
console links to check each claim — and the timeline chart (PNG)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from bot.chart import timeline_png
from bot.links import console_url
from playbooks.catalogue import get_playbook
from playbooks.lifecycle import Lifecycle, format_seconds
from playbooks.models import Evidence, Incident, StepRecord
from playbooks.service import IncidentReport


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M:%S UTC") if at else ""


def lifecycle(report: IncidentReport) -> Lifecycle:
    i = report.incident
    return Lifecycle.of(i, report.steps, get_playbook(i.playbook))


def record(report: IncidentReport, evidence: list[Evidence]) -> dict[str, Any]:
    i = report.incident
    facts = i.facts or {}
    life = lifecycle(report)
    steps = []
    snapshots: list[str] = []
    image = None
    for s in report.steps:
        details = s.details or {}
        snapshots += [x["id"] for x in details.get("snapshots", []) if x.get("id")]
        image = details.get("image") or image
        steps.append({
            "name": s.name, "status": s.status, "attempts": s.attempts,
            "started_at": _when(s.started_at), "finished_at": _when(s.finished_at),
            "duration_ms": s.duration_ms, "summary": s.summary,
            "verified": details.get("verified"), "error_code": s.error_code,
            "error_message": s.error_message, "prior_state": s.captured,
        })
    region = i.region
    links = {i.target_id: console_url(i.target_id, region, facts)}
    for eni in facts.get("enis", []):
        links[eni["id"]] = console_url(eni["id"], region)
    for item in [*snapshots, *([image] if image else [])]:
        links[item] = console_url(item, region)
    return {
        "incident": i.id, "kind": i.kind, "target": i.target_id, "playbook": i.playbook,
        "region": region, "account": i.account, "status": i.status, "summary": i.summary,
        "reason": i.reason, "requested_by": i.requester, "requested_at": _when(i.created_at),
        "source": facts.get("source") or "slack",
        "approved_by": i.decided_by, "decided_at": _when(i.decided_at),
        "auto_rule": i.auto_rule,
        "times": {k: _when(v) or None for k, v in life.times().items()},
        "durations_seconds": {k: None if v is None else round(v, 3)
                              for k, v in life.durations().items()},
        "release_of": facts.get("release_of"),
        "decisions": [{"user": d.user_id, "action": d.action, "outcome": d.outcome,
                       "at": _when(d.at)} for d in report.decisions],
        "steps": steps,
        "evidence": [{"name": e.name, "step": e.step, "bytes": e.size, "sha256": e.sha256}
                     for e in evidence],
        "snapshots": snapshots, "image": image,
        "console": {k: v for k, v in links.items() if v},
    }


def markdown(data: dict[str, Any]) -> str:
    lines = [
        f"# {data['incident']} — {data['playbook']} on {data['target']}",
        "",
        f"- Status: **{data['status']}** — {data['summary']}",
        f"- Region / account: {data['region']} / {data['account'] or '(own)'}",
        f"- Requested by {data['requested_by']} at {data['requested_at']} "
        f"(source: {data['source']}): {data['reason'] or '(no reason)'}",
        f"- Approved by {data['approved_by'] or '—'} at {data['decided_at'] or '—'}",
    ]
    if data.get("auto_rule"):
        lines.append(f"- Contained automatically by rule `{data['auto_rule']}`")
    if data.get("release_of"):
        lines.append(f"- Release of {data['release_of']}")
    lines += ["", "## Times", "", "| stage | at (UTC) |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {v or '—'} |" for k, v in data["times"].items()]
    lines += ["", "| duration | |", "|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {format_seconds(v)} |"
              for k, v in data["durations_seconds"].items()]
    lines += ["", "## Decisions", "", "| at | user | action | outcome |", "|---|---|---|---|"]
    lines += [f"| {d['at']} | {d['user']} | {d['action']} | {d['outcome']} |"
              for d in data["decisions"]] or ["| — | — | — | — |"]
    lines += ["", "## Steps", ""]
    for s in data["steps"]:
        took = f", {s['duration_ms']} ms" if s["duration_ms"] is not None else ""
        lines.append(f"### {s['name']} — {s['status']} ({s['started_at'] or 'not started'}"
                     f"{took}, {s['attempts']} attempt{'s' if s['attempts'] != 1 else ''})")
        if s["summary"]:
            lines.append(f"- Did: {s['summary']}")
        if s["verified"]:
            lines.append(f"- Verify saw: {s['verified']}")
        if s["error_code"]:
            lines.append(f"- Error: `{s['error_code']}` {s['error_message'] or ''}")
        lines.append("")
    lines += ["## Evidence", ""]
    lines += [f"- `{e['name']}` ({e['bytes']} bytes, from {e['step']}) SHA-256 `{e['sha256']}`"
              for e in data["evidence"]] or ["- none"]
    lines += ["", "## Preserved", "",
              f"- Snapshots: {', '.join(data['snapshots']) or 'none'}",
              f"- Image: {data['image'] or 'none'}", "", "## Console", ""]
    lines += [f"- {k}: {v}" for k, v in data["console"].items()]
    return "\n".join(lines) + "\n"


def files(report: IncidentReport, evidence: list[Evidence]) -> list[tuple[str, str | bytes]]:
    """(file name, content): the Markdown timeline, the JSON record and the timeline
    chart (PNG)."""
    data = record(report, evidence)
    base = f"{data['incident']}-record"
    return [(f"{base}.md", markdown(data)),
            (f"{base}.json", json.dumps(data, indent=2, sort_keys=True, default=str)),
            (f"{data['incident']}-timeline.png",
             timeline_png(report.incident, report.steps, lifecycle(report)))]


def fleet_files(reports: list[tuple[IncidentReport, list[Evidence]]]
                ) -> list[tuple[str, str | bytes]]:
    """A fleet's record: the fleet's own, then every member's, as one Markdown timeline
    and one JSON list."""
    records = [record(report, evidence) for report, evidence in reports]
    base = f"{records[0]['incident']}-fleet-record"
    fleet = reports[0][0]
    # The fleet's chart: one bar per member, from the start of its run to its end.
    members = [StepRecord(name=r.incident.target_id, status=MEMBER_BAR.get(
        r.incident.status, r.incident.status), started_at=r.incident.started_at,
        finished_at=r.incident.finished_at, duration_ms=_ms(r.incident))
        for r, _ in reports[1:]]
    return [(f"{base}.md", "\n\n---\n\n".join(markdown(r) for r in records)),
            (f"{base}.json", json.dumps(records, indent=2, sort_keys=True, default=str)),
            (f"{records[0]['incident']}-timeline.png",
             timeline_png(fleet.incident, members, lifecycle(fleet)))]


# A member's final status as its bar's colour (a step's outcome).
MEMBER_BAR = {"contained": "succeeded", "released": "succeeded", "failed": "failed",
              "partially contained": "running", "partially released": "running"}


def _ms(incident: Incident) -> int | None:
    if incident.started_at is None or incident.finished_at is None:
        return None
    return int((incident.finished_at - incident.started_at).total_seconds() * 1000)
