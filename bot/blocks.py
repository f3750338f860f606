"""Every Slack text and Block Kit layout Cordon sends, built with slack_sdk's models so
that Slack's limits are checked. Anything that came from a person or from AWS is
escaped before it is shown."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    SectionBlock,
)

from bot.ids import ActionId
from bot.text import escape
from playbooks.catalogue import INSTANCE_PLAYBOOKS, PLAYBOOKS, Playbook, step_descriptions
from playbooks.service import IncidentReport
from playbooks.status import StepStatus
from playbooks.store import (
    APPROVED,
    CONTAINED,
    DENIED,
    EXPIRED,
    FAILED,
    PARTIAL,
    PARTIALLY_RELEASED,
    PENDING,
    RELEASED,
    RETRYABLE,
    RUNNING,
    Evidence,
    Incident,
    StepRecord,
)

STATUS_ICON: dict[str, str] = {
    PENDING: "⏳", APPROVED: "▶️", RUNNING: "▶️", CONTAINED: "🔒", PARTIAL: "⚠️",
    FAILED: "❌", DENIED: "⛔", EXPIRED: "⌛", RELEASED: "🔓", PARTIALLY_RELEASED: "⚠️",
}
FINAL_LABEL: dict[str, str] = {
    CONTAINED: "Contained", PARTIAL: "Partially contained", FAILED: "Failed",
    RELEASED: "Released", PARTIALLY_RELEASED: "Partially released"}
STEP_ICON: dict[str, str] = {
    StepStatus.SUCCEEDED: "✅", StepStatus.SKIPPED: "✅", StepStatus.FAILED: "❌",
    StepStatus.NOT_RUN: "⏭️", StepStatus.RUNNING: "▶️", StepStatus.PENDING: "·"}


def slack_date(when: datetime) -> str:
    """A date every reader sees in their own time zone."""
    epoch = int(when.replace(tzinfo=UTC).timestamp())
    fallback = when.strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{epoch}^{{date_short_pretty}} {{time}}|{fallback}>"


def _mrkdwn(text: str) -> MarkdownTextObject:
    return MarkdownTextObject(text=text[:3000])


def _section(text: str) -> SectionBlock:
    return SectionBlock(text=_mrkdwn(text))


def _dicts(blocks: list[Block]) -> list[dict[str, Any]]:
    return [b.to_dict() for b in blocks]


def _duration(ms: int | None) -> str:
    if ms is None:
        return ""
    return f"{ms / 1000:.1f} s" if ms >= 100 else f"{ms} ms"


# approval card -------------------------------------------------------------------------


def describe_eni(eni: dict[str, Any]) -> str:
    groups = ", ".join(
        f"`{escape(g['id'])}` ({escape(g['name'])})" if g.get("name") else f"`{escape(g['id'])}`"
        for g in eni.get("groups", [])
    ) or "no groups"
    return f"• `{escape(eni['id'])}` {escape(eni.get('private_ip', ''))} — {groups}"


def _playbook_lines(playbook: Playbook) -> str:
    lines = []
    for n, (name, desc) in enumerate(step_descriptions(playbook), 1):
        lines.append(f"{n}. `{name}` — {escape(desc)}")
    return "\n".join(lines)


def _status_line(incident: Incident, approvals: Sequence[str] = ()) -> str:
    icon = STATUS_ICON.get(incident.status, "")
    who = f"<@{incident.decided_by}>" if incident.decided_by else ""
    when = slack_date(incident.decided_at) if incident.decided_at else ""
    if approvals and incident.approvals_required > 1:
        who = ", ".join(f"<@{u}>" for u in approvals)
    if incident.status == PENDING:
        expires = f"expires {slack_date(incident.expires_at)}"
        if incident.approvals_required > 1:
            by = f" ({', '.join(f'<@{u}>' for u in approvals)})" if approvals else ""
            return (f"{icon} *{len(approvals)} of {incident.approvals_required} approvals*"
                    f"{by} — this playbook needs {incident.approvals_required} different "
                    f"approvers — {expires}")
        return f"{icon} *Waiting for approval* — {expires}"
    if incident.status == DENIED:
        return f"{icon} *Denied* by {who} at {when}. Nothing was changed."
    if incident.status == EXPIRED:
        return (f"{icon} *Expired* at {slack_date(incident.expires_at)} without a decision. "
                "Nothing was changed.")
    line = f"✅ *Approved* by {who} at {when}"
    if incident.status in (APPROVED, RUNNING):
        return line + f"\n{icon} *Running* `{incident.playbook}` — see the thread"
    return (line + f"\n{icon} *{FINAL_LABEL.get(incident.status, incident.status)}* — "
            f"{escape(incident.summary)}")


def _plan_section(incident: Incident) -> SectionBlock:
    f = incident.facts or {}
    if incident.kind == "release":
        lines = [f"{n}. `{escape(name)}` — {escape(what)}"
                 for n, (name, what) in enumerate(f.get("undo", []), 1)]
        lines.append(f"{len(lines) + 1}. `mark-released` — tag the instance "
                     "cordon:status=released")
        return _section(f"*Release of {escape(f.get('release_of', '?'))}* "
                        f"({escape(f.get('release_of_status', '?'))}) — undo from the recorded "
                        "prior state:\n" + "\n".join(lines)
                        + "\nSnapshots, images and evidence files stay.")
    base = PLAYBOOKS.get(incident.playbook)
    if base is None:
        return _section(f"*Playbook `{escape(incident.playbook)}`* — not known to this "
                        "version of Cordon")
    playbook = base.for_target(f)
    added = ""
    if any(s.when == "fleet" for s in playbook.steps):
        added = ("\n_It is in an Auto Scaling group or behind a load balancer: its evidence is "
                 "protected and it is detached first, so that its group does not terminate "
                 "it once its network is cut._")
    return _section(f"*Playbook `{playbook.name}`* — {escape(playbook.summary)}\n"
                    + _playbook_lines(playbook) + added)


def _decision_buttons(incident: Incident) -> list[Block]:
    value = json.dumps({"incident_id": incident.id})
    if incident.status == PENDING:
        return [
            ActionsBlock(block_id="decision", elements=[
                ButtonElement(text="Approve", action_id=ActionId.APPROVE.value, value=value,
                              style="primary"),
                ButtonElement(text="Deny", action_id=ActionId.DENY.value, value=value,
                              style="danger"),
            ]),
            ContextBlock(elements=[_mrkdwn(
                "Only on-call approvers may decide; nobody approves their own request.")]),
        ]
    if incident.status in RETRYABLE:
        return [ActionsBlock(block_id="retry", elements=[
            ButtonElement(text="Retry", action_id=ActionId.RETRY.value, value=value)])]
    return []


def _blast_blocks(incident: Incident) -> list[Block]:
    blast = (incident.facts or {}).get("blast")
    if not blast:
        return []
    others = blast.get("others", [])
    where = (f"the whole VPC `{escape(blast.get('vpc_id', '?'))}`" if blast["scope"] == "vpc"
             else "subnet " + ", ".join(f"`{escape(s)}`" for s in blast.get("subnets", [])))
    lines = [f"⚠️ *Blast radius: {len(others)} other instance"
             f"{'' if len(others) == 1 else 's'} in {where} are hit too*"]
    lines += [f"• {escape(o.get('name') or '(no Name tag)')} `{escape(o['id'])}`"
              for o in others[:25]]
    if len(others) > 25:
        lines.append(f"… and {len(others) - 25} more")
    lines.append("*What changes*")
    lines += [f"• {escape(c)}" for c in blast.get("changes", [])] or ["• nothing found to change"]
    if blast.get("still_open"):
        lines.append("⚠️ *Not contained through these default routes, which stay*")
        lines += [f"• {escape(c)}" for c in blast["still_open"]]
    return [_section("\n".join(lines))]


def _account(facts: dict[str, Any]) -> str:
    number = escape(facts.get("account") or "?")
    name = facts.get("account_name")
    return f"{escape(name)} ({number})" if name else number


def _instance_blocks(incident: Incident) -> list[Block]:
    f = incident.facts or {}
    name = escape(f.get("name") or "(no Name tag)")
    return [
        _section(f"*{name}* `{escape(incident.target_id)}` — "
                 f"{escape(f.get('state', '?'))}, {escape(f.get('type', '?'))}"),
        SectionBlock(fields=[
            _mrkdwn(f"*Account*\n{_account(f)}"),
            _mrkdwn(f"*Region*\n{escape(incident.region)}"),
            _mrkdwn(f"*VPC / subnet*\n`{escape(f.get('vpc_id', '?'))}` / "
                    f"`{escape(f.get('subnet_id', '?'))}`"),
            _mrkdwn(f"*Instance profile*\n{escape(f.get('instance_profile') or 'none')}"),
            _mrkdwn(f"*Auto Scaling group*\n{escape(f.get('asg') or 'none')}"),
            _mrkdwn(f"*Requested by*\n<@{incident.requester}>"),
        ]),
        _section("*Network interfaces*\n"
                 + "\n".join(describe_eni(e) for e in f.get("enis", []))),
        *_ready_blocks(f),
        *([ContextBlock(elements=[_mrkdwn(
            "⚠️ *Security groups do not cut:* "
            + "; ".join(escape(n) for n in f["untracked_limits"]))])]
          if f.get("untracked_limits") and incident.playbook in ("full", "isolate") else []),
    ]


def _ready_blocks(facts: dict[str, Any]) -> list[Block]:
    """What was made ready before approval, so that the cut starts at the click."""
    early = facts.get("early") or {}
    cut = early.get("isolate-security-groups")
    if not cut:
        return []
    made = cut.get("created_groups") or []
    line = (f"⚡ *Isolation groups ready:* `{escape(cut['open_group'])}` (cordon-open), "
            f"`{escape(cut['sealed_group'])}` (cordon-sealed)"
            + (" — created for this VPC just now" if made else "")
            + f". Prior state recorded for {len(early)} step"
            + ("" if len(early) == 1 else "s") + ": the cut starts at the click.")
    return [ContextBlock(elements=[_mrkdwn(line)])]


def _key_blocks(incident: Incident) -> list[Block]:
    f = incident.facts or {}
    key = f"`{escape(f['key_id'])}`"
    if f.get("temporary"):
        return [
            _section(f"*Temporary key* {key} in account {_account(f)}, "
                     f"issued by role *{escape(f.get('role') or '?')}*"),
            _section("⚠️ A temporary key cannot be deactivated. Approving revokes *every* "
                     f"session of role `{escape(f.get('role') or '?')}` issued before now — "
                     "legitimate ones too; they must assume the role again."),
            SectionBlock(fields=[_mrkdwn(f"*Requested by*\n<@{incident.requester}>")]),
        ]
    used = f.get("last_used") or {}
    last = (f"{escape(used['when'])} — {escape(str(used.get('service')))} in "
            f"{escape(str(used.get('region')))}" if used.get("when") else "never")
    others = ", ".join(f"`{escape(k['id'])}` ({escape(k['status'])})"
                       for k in f.get("other_keys", [])) or "none"
    age = f"{f['age_days']} days" if f.get("age_days") is not None else "?"
    return [
        _section(f"*Access key* {key} of IAM user *{escape(f.get('user', '?'))}* in account "
                 f"{_account(f)}"),
        SectionBlock(fields=[
            _mrkdwn(f"*Status*\n{escape(f.get('status', '?'))}, {age} old"),
            _mrkdwn(f"*Last used*\n{last}"),
            _mrkdwn(f"*Other keys*\n{others}"),
            _mrkdwn(f"*Console access*\n{'yes' if f.get('console') else 'no'}"),
            _mrkdwn("*Attached policies*\n"
                    + (escape(", ".join(f.get("attached_policies", []))) or "none")),
            _mrkdwn("*Inline policies*\n"
                    + (escape(", ".join(f.get("inline_policies", []))) or "none")),
            _mrkdwn(f"*Requested by*\n<@{incident.requester}>"),
            _mrkdwn("*Console*\n" + ("will be disabled (console=off)"
                                     if (incident.options or {}).get("console") == "off"
                                     else "left alone (add console=off to disable)")),
        ]),
    ]


def render_card(incident: Incident, approvals: Sequence[str] = ()
                ) -> tuple[str, list[dict[str, Any]]]:
    """The approval card, rendered from the store; the same function renders every
    later state of it (approvals so far, decided, running, final)."""
    f = incident.facts or {}
    title = "Release request" if incident.kind == "release" else "Containment request"
    if f.get("key_id"):
        title = title.replace("Containment", "Leaked key")
    target = _key_blocks(incident) if f.get("key_id") else _instance_blocks(incident)
    blocks: list[Block] = [
        HeaderBlock(text=f"{title} {incident.id}"),
        *target,
        _section(f"*Reason*\n{escape(incident.reason) or '_(none given)_'}"),
        _plan_section(incident),
        *_blast_blocks(incident),
        DividerBlock(),
        _section(_status_line(incident, approvals)),
        *_decision_buttons(incident),
    ]
    text = (f"{title} {incident.id}: {incident.target_id} "
            f"({incident.playbook}) — {incident.status}")
    return text, _dicts(blocks)


# thread ------------------------------------------------------------------------------


def render_run_started(incident: Incident, resumed: bool) -> str:
    what = f"`{incident.playbook}` on `{incident.target_id}`"
    if resumed:
        return (f"▶️ Resuming {what} after an interruption; finished steps are skipped.")
    return f"▶️ Approved by <@{incident.decided_by}>. Running {what}."


def render_retry(incident: Incident, user: str) -> str:
    return (f"🔁 <@{user}> asked to retry `{incident.playbook}`: steps already done are "
            "skipped.")


def render_evidence(evidence: Evidence) -> str:
    return f"🧾 `{escape(evidence.name)}` — {evidence.size} bytes, SHA-256 `{evidence.sha256}`"


def render_snapshot_report(states: dict[str, str]) -> str:
    failed = [s for s, state in states.items() if state == "error"]
    done = [s for s, state in states.items() if state == "completed"]
    if failed:
        return (f"❌ Snapshots failed: {', '.join(failed)}"
                + (f"; completed: {', '.join(done)}" if done else ""))
    return f"📦 Snapshots completed: {', '.join(done)}"


def render_step(step: StepRecord) -> str:
    icon = STEP_ICON.get(step.status, "")
    took = f" ({_duration(step.duration_ms)})" if step.duration_ms is not None else ""
    if step.status == StepStatus.FAILED:
        line = f"{icon} *{step.name}* failed — `{escape(step.error_code or '?')}`: " \
               f"{escape(step.error_message or '')}"
        line += f"\nDone before the failure: {escape(step.summary)}" if step.summary else \
            "\nNothing was changed by this step."
        return line + took
    verified = (step.details or {}).get("verified")
    line = f"{icon} *{step.name}* — {escape(step.summary)}{took}"
    if verified:
        line += f"\n_verified: {escape(str(verified))}_"
    return line


def render_run_finished(incident: Incident) -> str:
    icon = STATUS_ICON.get(incident.status, "")
    label = FINAL_LABEL.get(incident.status, incident.status.capitalize())
    return f"{icon} *{label}* — {escape(incident.summary)}"


# status and help ---------------------------------------------------------------------


def render_status_list(incidents: list[Incident]) -> str:
    if not incidents:
        return "No incidents yet."
    lines = ["*Recent incidents*"]
    for i in incidents:
        lines.append(f"{STATUS_ICON.get(i.status, '')} `{i.id}` `{i.target_id}` "
                     f"{i.playbook} — *{i.status}* — asked by <@{i.requester}> "
                     f"{slack_date(i.created_at)}")
    return "\n".join(lines)


def render_status_detail(report: IncidentReport) -> str:
    i = report.incident
    lines = [
        f"{STATUS_ICON.get(i.status, '')} *{i.id}* `{i.target_id}` ({escape(i.region)}) — "
        f"playbook `{i.playbook}` — *{i.status}*",
        f"Asked by <@{i.requester}> at {slack_date(i.created_at)}: "
        f"{escape(i.reason) or '_(no reason)_'}",
    ]
    for d in report.decisions:
        lines.append(f"• <@{d.user_id}> {d.action} at {slack_date(d.at)} — {escape(d.outcome)}")
    for s in report.steps:
        took = f" ({_duration(s.duration_ms)})" if s.duration_ms is not None else ""
        err = f" `{escape(s.error_code)}`" if s.error_code else ""
        lines.append(f"{STEP_ICON.get(s.status, '')} {s.name} — {s.status}{err}{took}")
    if i.summary:
        lines.append(f"Summary: {escape(i.summary)}")
    return "\n".join(lines)


def render_help() -> str:
    names = ", ".join(f"`{p.name}` ({escape(p.summary)})"
                      for p in INSTANCE_PLAYBOOKS.values())
    return "\n".join([
        "*Cordon — contain a compromised AWS instance, with approval and a timeline*",
        "`/contain <instance-id> [playbook] [region=R] [account=A] [reason…]` — ask to contain",
        "  e.g. `/contain i-0abc123def4567890 isolate suspected crypto-miner`",
        "  e.g. `/contain i-0abc123def4567890 region=eu-west-1 outbound to known C2`",
        "`/contain key <access-key-id> [console=off] [reason…]` — a leaked access key: "
        "deactivate it, revoke its sessions, review what it did",
        "  e.g. `/contain key AKIAIOSFODNN7EXAMPLE found in a public repository`",
        "`/contain release <instance-id|key-id|incident-id> [reason…]` — undo a containment "
        "(approval required)",
        "`/contain status [instance-id|incident-id]` — what happened, who did what, when",
        "  e.g. `/contain status CRD-7Q2M4K`",
        "  e.g. `/contain i-0abc123def4567890 nacl mode=insert worm spreading in the subnet`",
        "`/contain help` — this text",
        f"Playbooks: {names}.",
        "An on-call approver (not the requester) must press *Approve* on the card; "
        "`nacl`, `route` and `igw` hit a whole subnet or VPC and need more than one.",
    ])


def render_error(message: str) -> str:
    return f"⚠️ {message}"
