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
    ConfirmObject,
    ContextBlock,
    DividerBlock,
    HeaderBlock,
    MarkdownTextObject,
    PlainTextObject,
    SectionBlock,
)

from bot.ids import ActionId
from bot.links import ids_in_text, linked
from bot.text import escape, link
from playbooks.auto import RULE_DECIDER
from playbooks.catalogue import (
    INSTANCE_PLAYBOOKS,
    PLAYBOOKS,
    Playbook,
    get_playbook,
    step_descriptions,
)
from playbooks.lifecycle import Lifecycle, stages_line
from playbooks.models import Evidence, Incident, StepRecord
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


# Slack's limits (Block Kit reference): a section's text 3,000 characters, a field 2,000,
# a context element 3,000, a header 150, a button's value 2,000, 50 blocks a message.
SECTION_MAX, FIELD_MAX, CONTEXT_MAX, HEADER_MAX, MAX_BLOCKS = 3000, 2000, 3000, 150, 50
LINE_MAX = 600  # one line of a list (an ENI with five long group names, say)
MORE = "… and {n} more — the full plan is in the thread"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def fit_lines(head: str, lines: Sequence[str], limit: int, cut: list[str] | None = None,
              what: str = "", sep: str = "\n") -> str:
    """`head` and as many whole lines as fit in `limit` characters, then how many more
    there are; what was left out is named in `cut` (the card then posts the full plan)."""
    lines = [clip(line, LINE_MAX) for line in lines]
    text = head
    for index, line in enumerate(lines):
        rest = len(lines) - index
        tail = sep + MORE.format(n=rest)
        candidate = text + (sep if text else "") + line
        # Room must stay for the "and N more" line should a later one not fit.
        room = limit - (len(tail) if index + 1 < len(lines) else 0)
        if len(candidate) > room:
            if cut is not None:
                cut.append(f"{what or 'list'}: {rest} of {len(lines)} not shown")
            return (text + tail) if text else MORE.format(n=rest)
        text = candidate
    return text


def _dicts(blocks: list[Block]) -> list[dict[str, Any]]:
    return [b.to_dict() for b in blocks]


def requester(incident: Incident) -> str:
    """Who asked: a person (a mention), or the alert a card was proposed from."""
    source = (incident.facts or {}).get("source")
    if source and incident.kind != "release":
        return f"{escape(str(source))} (alert)"
    return f"<@{incident.requester}>"


def _finding_blocks(incident: Incident) -> list[Block]:
    """The alert a proposed card comes from: what, how severe, where, when, and a link."""
    f = (incident.facts or {}).get("finding")
    if not f:
        return []
    severity = (f"{f['severity']:g} ({escape(f['severity_label'])})"
                if f.get("severity") is not None else "— (a person set the tag)")
    more = len((incident.facts or {}).get("findings") or []) - 1
    sample = ("🧪 *Sample finding* — generated to try the pipeline, not seen in the account\n"
              if f.get("sample") else "")
    text = (f"{sample}🚨 *Proposed by {escape(f['source'])}* — "
            f"{escape(clip(f.get('title', ''), 500))}\n"
            f"Type `{escape(clip(f.get('type', ''), 200))}` · severity {severity} · account "
            f"{escape(f.get('account') or '?')} · region {escape(f.get('region') or '?')}\n"
            f"First seen {escape(f.get('first_seen') or '?')} · last seen "
            f"{escape(f.get('last_seen') or '?')} · {link(f['console_url'], 'open the finding')}"
            + (f"\n{more} more finding{'s' if more != 1 else ''} about it since: see the thread"
               if more > 0 else "")
            + "\n_Any on-call approver may approve or deny it._")
    return [SectionBlock(text=_mrkdwn(clip(text, SECTION_MAX)))]


def render_finding_note(p: Any, own: bool = False) -> str:
    """A finding about a resource whose containment is open or holds: another finding, or
    (`own`) the card's own finding seen again. Kept up to date in place as its count
    changes."""
    severity = f"{p.severity:g} ({p.severity_label})" if p.severity is not None else "—"
    seen = f"seen {p.count} times, " if p.count is not None else ""
    head = (f"🔁 The finding behind this card again (`{escape(clip(p.type, 200))}`)" if own
            else f"🚨 Another {escape(p.source)} finding about `{escape(p.resource_id)}`"
            f"{' (sample)' if p.sample else ''}: {escape(clip(p.title, 500))} — "
            f"`{escape(clip(p.type, 200))}`")
    return (f"{head}: severity {escape(severity)}, {seen}last seen "
            f"{escape(p.last_seen or '?')} · {link(p.console_url, 'open the finding')}")


def render_not_proposed(p: Any, error: Exception) -> str:
    """A finding that made no card, and why (said in the findings channel)."""
    return (f"⚠️ {escape(p.source)} finding `{escape(clip(p.type, 200))}` (severity "
            f"{escape(p.severity_label or '?')}) about `{escape(p.resource_id)}` in "
            f"{escape(p.account or '?')}/{escape(p.region or '?')}: {error_text(error)}. "
            "No card was made.")


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


def progress_line(steps: Sequence[StepRecord]) -> str:
    """"5 of 9 steps done — snapshot-volumes running"."""
    done = sum(1 for s in steps if s.status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED))
    failed = [s.name for s in steps if s.status == StepStatus.FAILED]
    running = [s.name for s in steps if s.status == StepStatus.RUNNING]
    line = f"{done} of {len(steps)} steps done"
    if failed:
        line += f", {len(failed)} failed ({', '.join(failed)})"
    if running:
        line += f" — {', '.join(running)} running"
    return line


def durations_line(incident: Incident, steps: Sequence[StepRecord] = ()) -> str:
    """"⏱ finding → card 4.0 s · → decision 2 min 10 s · → cut 1.3 s · → contained 12 s"
    ("" for a fleet's own record and a release, which cut nothing)."""
    if incident.kind in ("fleet", "release"):
        return ""
    return "⏱ " + stages_line(Lifecycle.of(incident, steps, get_playbook(incident.playbook)))


def _status_line(incident: Incident, approvals: Sequence[str] = (),
                 steps: Sequence[StepRecord] = (), members: Sequence[Incident] = ()) -> str:
    icon = STATUS_ICON.get(incident.status, "")
    who = f"<@{incident.decided_by}>" if incident.decided_by else ""
    when = slack_date(incident.decided_at) if incident.decided_at else ""
    if approvals and incident.approvals_required > 1:
        who = ", ".join(f"<@{u}>" for u in approvals)
    if incident.status == PENDING:
        expires = f"expires {slack_date(incident.expires_at)}"
        if incident.approvals_required > 1:
            by = f" ({', '.join(f'<@{u}>' for u in approvals)})" if approvals else ""
            what = "a fleet this size" if incident.kind == "fleet" else "this playbook"
            return (f"{icon} *{len(approvals)} of {incident.approvals_required} approvals*"
                    f"{by} — {what} needs {incident.approvals_required} different "
                    f"approvers — {expires}")
        return f"{icon} *Waiting for approval* — {expires}"
    if incident.status == DENIED:
        return f"{icon} *Denied* by {who} at {when}. Nothing was changed."
    if incident.status == EXPIRED:
        return (f"{icon} *Expired* at {slack_date(incident.expires_at)} without a decision. "
                "Nothing was changed.")
    line = f"✅ *Approved* by {who} at {when}"
    if incident.auto_rule:
        line = (f"🤖 *Contained automatically* by rule `{escape(incident.auto_rule)}` at {when}"
                + (f" — reviewed {slack_date(incident.reviewed_at)}" if incident.reviewed_at
                   else " — not reviewed yet"))
    if incident.status in (APPROVED, RUNNING) and incident.kind == "fleet":
        return (line + f"\n{icon} *Running* `{incident.playbook}` on {len(members)} "
                f"instances — {fleet_progress(members)} — see the thread")
    if incident.status in (APPROVED, RUNNING):
        done = f" — {progress_line(steps)}" if steps else ""
        return line + f"\n{icon} *Running* `{incident.playbook}`{done} — see the thread"
    timed = durations_line(incident)
    return (line + f"\n{icon} *{FINAL_LABEL.get(incident.status, incident.status)}* — "
            f"{escape(incident.summary)}" + (f"\n{timed}" if timed else ""))


def _plan_section(incident: Incident, cut: list[str]) -> SectionBlock:
    f = incident.facts or {}
    if incident.kind == "release":
        lines = [f"{n}. `{escape(name)}` — {escape(what)}"
                 for n, (name, what) in enumerate(f.get("undo", []), 1)]
        lines.append(f"{len(lines) + 1}. `mark-released` — tag the instance "
                     "cordon:status=released")
        lines.append("Snapshots, images and evidence files stay.")
        return _section(fit_lines(
            f"*Release of {escape(f.get('release_of', '?'))}* "
            f"({escape(f.get('release_of_status', '?'))}) — undo from the recorded prior "
            "state:", lines, SECTION_MAX, cut, "undo steps"))
    if incident.kind == "fleet" and incident.playbook == "release":
        return _section(f"*Release of {escape(f.get('release_of', '?'))}* "
                        f"({escape(f.get('release_of_status', '?'))}) — each instance listed "
                        "gets back what its containment changed, from its own recorded prior "
                        "state (its groups, its profile, its protections, its Auto Scaling "
                        "group). Snapshots, images and evidence files stay; revocations stay "
                        "until the credentials they cover have expired.")
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
    return _section(fit_lines(f"*Playbook `{playbook.name}`* — {escape(playbook.summary)}",
                              [*_playbook_lines(playbook).split("\n"), added.strip()],
                              SECTION_MAX, cut, "steps"))


def _decision_buttons(incident: Incident) -> list[Block]:
    value = json.dumps({"incident_id": incident.id})
    if incident.auto_rule and incident.reviewed_at is None and incident.status in (
            CONTAINED, PARTIAL, FAILED):
        return [
            ActionsBlock(block_id="review", elements=[
                ButtonElement(text="Keep", action_id=ActionId.KEEP.value, value=value,
                              style="primary"),
                ButtonElement(text="Release", action_id=ActionId.RELEASE.value, value=value,
                              style="danger"),
            ]),
            ContextBlock(elements=[_mrkdwn(
                "Approvers: *Keep* goes on with `full` (evidence, role, snapshots, image); "
                "*Release* undoes the isolation.")]),
        ]
    if incident.status == PENDING:
        return [
            ActionsBlock(block_id="decision", elements=[
                ButtonElement(text="Approve", action_id=ActionId.APPROVE.value, value=value,
                              style="primary", confirm=_wide_confirm(incident)),
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


def _wide_confirm(incident: Incident) -> ConfirmObject | None:
    """A wide playbook's Approve asks first, naming how many other instances it hits."""
    blast = (incident.facts or {}).get("blast")
    if not blast:
        return None
    n = len(blast.get("others", []))
    where = "VPC" if blast.get("scope") == "vpc" else "subnet"
    return ConfirmObject(
        title=clip(f"Approve {incident.playbook} on the whole {where}?", 100),
        # Slack's confirmation dialog takes plain text.
        text=PlainTextObject(text=clip(
            f"This also cuts {n} other instance{'' if n == 1 else 's'} in the {where} and "
            f"makes {len(blast.get('changes', []))} change"
            f"{'' if len(blast.get('changes', [])) == 1 else 's'}. The full list is on the "
            "card and in its thread.", 300)),
        confirm="Approve", deny="Cancel", style="danger")


def _blast_blocks(incident: Incident, cut: list[str]) -> list[Block]:
    blast = (incident.facts or {}).get("blast")
    if not blast:
        return []
    others = blast.get("others", [])
    where = (f"the whole VPC `{escape(blast.get('vpc_id', '?'))}`" if blast["scope"] == "vpc"
             else "subnet " + ", ".join(f"`{escape(s)}`" for s in blast.get("subnets", [])))
    head = (f"⚠️ *Blast radius: {len(others)} other instance"
            f"{'' if len(others) == 1 else 's'} in {clip(where, 600)} are hit too*")
    blocks: list[Block] = [_section(fit_lines(head, [
        f"• {escape(o.get('name') or '(no Name tag)')} `{escape(o['id'])}`" for o in others],
        SECTION_MAX, cut, "instances in the blast radius"))]
    changes = [f"• {escape(c)}" for c in blast.get("changes", [])] or ["• nothing found to change"]
    blocks.append(_section(fit_lines(f"*What changes* ({len(blast.get('changes', []))})",
                                     changes, SECTION_MAX, cut, "changes")))
    if incident.playbook in ("nacl", "route"):
        blocks.append(_section(
            "⚠️ *Traffic between instances inside the subnet is not cut*: a network ACL or "
            "route table never sees it. For a worm spreading inside the subnet, use "
            "`isolate` (or `full`) on each instance."))
    if blast.get("still_open"):
        blocks.append(_section(fit_lines(
            "⚠️ *Not contained through these default routes, which stay*",
            [f"• {escape(c)}" for c in blast["still_open"]], SECTION_MAX, cut,
            "default routes that stay")))
    return blocks


def _account(facts: dict[str, Any]) -> str:
    number = escape(facts.get("account") or "?")
    name = facts.get("account_name")
    return f"{escape(name)} ({number})" if name else number


def _instance_blocks(incident: Incident, cut: list[str]) -> list[Block]:
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
            _mrkdwn(f"*Requested by*\n{requester(incident)}"),
        ]),
        _section(fit_lines(f"*Network interfaces* ({len(f.get('enis', []))})",
                           [describe_eni(e) for e in f.get("enis", [])], SECTION_MAX, cut,
                           "network interfaces")),
        *(_ready_blocks(f) if incident.kind == "instance" else []),
        ContextBlock(elements=[_mrkdwn("🔗 Console: " + linked(
            [incident.target_id, *[e["id"] for e in f.get("enis", [])],
             *[g["id"] for e in f.get("enis", []) for g in e.get("groups", [])]],
            incident.region, f, limit=CONTEXT_MAX - 20))]),
        *([ContextBlock(elements=[_mrkdwn(fit_lines(
            "⚠️ *Security groups do not cut:*", [escape(n) for n in f["untracked_limits"]],
            CONTEXT_MAX, cut, "what security groups do not cut", sep=" · "))])]
          if f.get("untracked_limits") and incident.playbook in ("full", "isolate") else []),
    ]


def fleet_progress(members: Sequence[Incident]) -> str:
    """`12 contained, 3 running, 1 failed` — the members by status."""
    counts: dict[str, int] = {}
    for m in members:
        label = FINAL_LABEL.get(m.status, m.status).lower()
        counts[label] = counts.get(label, 0) + 1
    return ", ".join(f"{n} {label}" for label, n in sorted(counts.items(),
                                                          key=lambda kv: -kv[1])) or "—"


def member_line(member: dict[str, Any]) -> str:
    name = escape(member.get("name") or "(no Name tag)")
    where = escape(member.get("region") or "?")
    asg = f", group {escape(member['asg'])}" if member.get("asg") else ""
    return (f"• {name} `{escape(member['instance'])}` — {where}, "
            f"{member.get('enis', 0)} ENI{'' if member.get('enis') == 1 else 's'}{asg}")


def _fleet_blocks(incident: Incident, cut: list[str]) -> list[Block]:
    fleet = (incident.facts or {}).get("fleet") or {}
    members = fleet.get("members", [])
    enis = sum(int(m.get("enis") or 0) for m in members)
    blocks: list[Block] = [
        _section(f"*{len(members)} instances* — `{escape(fleet.get('label', '?'))}` — "
                 f"{enis} network interfaces in {escape(', '.join(fleet.get('regions', [])))}"),
        _section(fit_lines("*Instances*", [member_line(m) for m in members], SECTION_MAX,
                           cut, "instances")),
        SectionBlock(fields=[
            _mrkdwn(f"*Requested by*\n{requester(incident)}"),
            _mrkdwn("*Blast radius*\nthe instances listed, each on its own: no subnet, "
                    "route or other instance is changed"),
        ]),
    ]
    sever = fleet.get("sever") or {}
    if sever.get("blocks"):
        spare = int(sever.get("spare") or 0)
        blocks.append(ContextBlock(elements=[_mrkdwn(
            f"✂️ *Flows no security group ends* (through a NAT gateway and the like): "
            f"{sever['addresses']} addresses denied on the carrying subnets' ACLs with "
            f"{sever['blocks']} entr{'y' if sever['blocks'] == 1 else 'ies'} a direction — "
            "blocks that hold no other instance's address"
            + (f"; they also hold {spare} free address{'' if spare == 1 else 'es'}: an "
               "instance launched into one meanwhile is cut there too" if spare else ""))]))
    left_out = fleet.get("left_out") or []
    if left_out:
        blocks.append(ContextBlock(elements=[_mrkdwn(fit_lines(
            f"⚠️ *Left out* ({len(left_out)}):",
            [f"`{escape(x['instance'])}` {escape(x['why'])}" for x in left_out],
            CONTEXT_MAX, cut, "instances left out", sep=" · "))]))
    return blocks


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


def _field(label: str, items: Sequence[str], cut: list[str], empty: str = "none") -> str:
    """A field listing `items`, within Slack's 2,000 characters."""
    if not items:
        return f"*{label}*\n{empty}"
    return fit_lines(f"*{label}*", list(items), FIELD_MAX, cut, label.lower(), sep="\n")


def _key_blocks(incident: Incident, cut: list[str]) -> list[Block]:
    f = incident.facts or {}
    key = f"`{escape(f['key_id'])}`"
    if f.get("temporary"):
        return [
            _section(f"*Temporary key* {key} in account {_account(f)}, "
                     f"issued by role *{escape(f.get('role') or '?')}*"),
            _section("⚠️ A temporary key cannot be deactivated. Approving revokes *every* "
                     f"session of role `{escape(f.get('role') or '?')}` issued before now — "
                     "legitimate ones too; they must assume the role again."),
            SectionBlock(fields=[_mrkdwn(f"*Requested by*\n{requester(incident)}")]),
        ]
    used = f.get("last_used") or {}
    last = (f"{escape(used['when'])} — {escape(str(used.get('service')))} in "
            f"{escape(str(used.get('region')))}" if used.get("when") else "never")
    others = [f"`{escape(k['id'])}` ({escape(k['status'])})" for k in f.get("other_keys", [])]
    age = f"{f['age_days']} days" if f.get("age_days") is not None else "?"
    return [
        _section(f"*Access key* {key} of IAM user *{escape(f.get('user', '?'))}* in account "
                 f"{_account(f)}"),
        SectionBlock(fields=[
            _mrkdwn(f"*Status*\n{escape(f.get('status', '?'))}, {age} old"),
            _mrkdwn(f"*Last used*\n{last}"),
            _mrkdwn(_field("Other keys", others, cut)),
            _mrkdwn(f"*Console access*\n{'yes' if f.get('console') else 'no'}"),
            _mrkdwn(_field("Attached policies",
                           [escape(p) for p in f.get("attached_policies", [])], cut)),
            _mrkdwn(_field("Inline policies",
                           [escape(p) for p in f.get("inline_policies", [])], cut)),
            _mrkdwn(f"*Requested by*\n{requester(incident)}"),
            _mrkdwn("*Console*\n" + ("will be disabled (console=off)"
                                     if (incident.options or {}).get("console") == "off"
                                     else "left alone (add console=off to disable)")),
        ]),
    ]


def _policy_fields(incident: Incident, cut: list[str]) -> list[MarkdownTextObject]:
    """A principal's policies, and who asked."""
    f = incident.facts or {}
    return [_mrkdwn(_field("Attached policies",
                           [escape(p) for p in f.get("attached_policies", [])], cut)),
            _mrkdwn(_field("Inline policies",
                           [escape(p) for p in f.get("inline_policies", [])], cut)),
            _mrkdwn(f"*Requested by*\n{requester(incident)}")]


def _dry_run(incident: Incident, note: str, cut: list[str]) -> list[Block]:
    """The plan of a user, role or bucket as each change with its value now and after
    (none on a release card: the release's own plan is its undo steps)."""
    if incident.kind == "release":
        return []
    lines = (incident.facts or {}).get("plan_lines", [])
    return [_section(fit_lines(f"*Dry run* — each change, now → after. {note}",
                               [f"• {escape(line)}" for line in lines], SECTION_MAX, cut,
                               "changes"))]


def _user_blocks(incident: Incident, cut: list[str]) -> list[Block]:
    f = incident.facts or {}
    unread = f.get("unreadable") or {}
    blocks: list[Block] = [
        _section(f"*IAM user* *{escape(f.get('user', '?'))}* in account {_account(f)} "
                 f"(`{escape(f.get('user_arn', '?'))}`)"),
        SectionBlock(fields=[
            _mrkdwn(f"*Console access*\n{'yes' if f.get('console') else 'no'}"),
            _mrkdwn(_field("MFA devices", [f"`{escape(d)}`" for d in f.get("mfa_devices", [])],
                           cut)),
            _mrkdwn(_field("Groups", [escape(g) for g in f.get("groups", [])], cut)),
            *_policy_fields(incident, cut),
        ]),
        *_dry_run(incident, "(MFA devices, groups and policies are listed, not changed):",
                  cut),
    ]
    if unread:
        blocks.append(ContextBlock(elements=[_mrkdwn("⚠️ Not readable now: " + "; ".join(
            f"{escape(k)} ({escape(v)})" for k, v in unread.items()))]))
    return blocks


def _role_blocks(incident: Incident, cut: list[str]) -> list[Block]:
    f = incident.facts or {}
    instances = [f"`{escape(i['id'])}` ({escape(i['region'])}, {escape(i['profile'])})"
                 for i in f.get("role_instances", [])]
    trusted = [f"{escape(kind)}: {escape(', '.join(who))}"
               for kind, who in (f.get("trusted") or {}).items()]
    return [
        _section(f"*IAM role* *{escape(f.get('role', '?'))}* in account {_account(f)} "
                 f"(`{escape(f.get('role_arn', '?'))}`)"),
        SectionBlock(fields=[
            _mrkdwn(_field("Who may assume it", trusted, cut)),
            _mrkdwn(_field("Instance profiles",
                           [escape(p) for p in f.get("instance_profiles", [])], cut)),
            _mrkdwn(_field("Running instances using it", instances, cut)),
            *_policy_fields(incident, cut),
        ]),
        *_dry_run(incident, "⚠️ Every session of the role is hit, legitimate ones too:",
                  cut),
    ]


def _bucket_blocks(incident: Incident, cut: list[str]) -> list[Block]:
    f = incident.facts or {}
    state = f.get("state") or {}
    return [
        _section(f"*S3 bucket* *{escape(f.get('bucket', '?'))}* in account {_account(f)}, "
                 f"{escape(incident.region)}"),
        SectionBlock(fields=[
            _mrkdwn(f"*Website hosting*\n{'on' if state.get('website') else 'off'}"),
            _mrkdwn(f"*Replication*\n{'configured' if state.get('replication') else 'none'}"),
            _mrkdwn(_field("Still allowed in", [f"`{escape(a)}`" for a in f.get("allowed", [])],
                           cut)),
            _mrkdwn(f"*Requested by*\n{requester(incident)}"),
        ]),
        *_dry_run(incident, "The prior state is recorded, with its SHA-256, for the "
                            "release:", cut),
    ]


def render_card(incident: Incident, approvals: Sequence[str] = (),
                steps: Sequence[StepRecord] = (), members: Sequence[Incident] = ()
                ) -> tuple[str, list[dict[str, Any]]]:
    """The approval card, rendered from the store; the same function renders every
    later state of it (approvals so far, decided, running with its progress, final).
    A fleet's card shows its members' progress (`members`)."""
    title, blocks, _ = _card(incident, approvals, steps, members)
    text = (f"{title} {incident.id}: {incident.target_id} "
            f"({incident.playbook}) — {incident.status}")
    return text, _dicts(blocks)


def card_hides(incident: Incident) -> list[str]:
    """What the card cannot show within Slack's limits (then the full plan is posted in
    its thread before its buttons appear)."""
    return _card(incident)[2]


def _card(incident: Incident, approvals: Sequence[str] = (),
          steps: Sequence[StepRecord] = (), members: Sequence[Incident] = ()
          ) -> tuple[str, list[Block], list[str]]:
    f = incident.facts or {}
    cut: list[str] = []
    title = "Release request" if incident.kind == "release" else "Containment request"
    if f.get("key_id"):
        title = title.replace("Containment", "Leaked key")
    elif f.get("user_arn"):
        title = title.replace("Containment", "IAM user")
    elif f.get("role_arn"):
        title = title.replace("Containment", "IAM role")
    elif f.get("bucket_arn"):
        title = title.replace("Containment", "S3 bucket")
    if incident.kind == "fleet":
        title = ("Fleet release request" if incident.playbook == "release"
                 else "Fleet containment request")
        target = _fleet_blocks(incident, cut)
    elif f.get("key_id"):
        target = _key_blocks(incident, cut)
    elif f.get("user_arn"):
        target = _user_blocks(incident, cut)
    elif f.get("role_arn"):
        target = _role_blocks(incident, cut)
    elif f.get("bucket_arn"):
        target = _bucket_blocks(incident, cut)
    else:
        target = _instance_blocks(incident, cut)
    if f.get("key_id") and f.get("user"):
        target.append(ContextBlock(elements=[_mrkdwn(
            "🔗 Console: " + linked([f["key_id"]], incident.region, f))]))
    if f.get("source") and incident.kind != "release":
        title = title.replace("request", "proposed")
    if incident.auto_rule:
        title = "Isolated automatically"
    blocks: list[Block] = [
        HeaderBlock(text=clip(f"{title} {incident.id}", HEADER_MAX)),
        *(_finding_blocks(incident) if incident.kind != "release" else []),
        *target,
        _section(f"*Reason*\n{escape(incident.reason) or '_(none given)_'}"),
        _plan_section(incident, cut),
        *_blast_blocks(incident, cut),
        DividerBlock(),
    ]
    if cut and incident.status == PENDING:
        posted = f.get("plan") == "posted"
        blocks.append(ContextBlock(elements=[_mrkdwn(
            "📄 This card cannot show everything (" + "; ".join(cut) + "). "
            + ("The full plan is in the thread: read it before you decide."
               if posted else "The full plan is being posted in the thread; the buttons "
               "appear once it is there."))]))
    blocks.append(_section(_status_line(incident, approvals, steps, members)))
    if not (cut and incident.status == PENDING and f.get("plan") != "posted"):
        blocks += _decision_buttons(incident)
    assert len(blocks) <= MAX_BLOCKS
    return title, blocks, cut


PLAN_PART_MAX = 3500  # characters of one thread message of the full plan


def render_full_plan(incident: Incident) -> list[str]:
    """Everything the card lists, in full — every ENI, every instance and change of the
    blast radius, every policy and key — as thread messages of at most PLAN_PART_MAX
    characters each. Posted when the card cannot show it all."""
    f = incident.facts or {}
    lines = [f"📄 *Full plan of {incident.id}* — everything this request would touch:"]
    fleet = f.get("fleet") or {}
    if fleet:
        lines.append(f"*Instances* ({len(fleet.get('members', []))})")
        lines += [member_line(m) for m in fleet.get("members", [])]
        if fleet.get("left_out"):
            lines.append(f"*Left out* ({len(fleet['left_out'])})")
            lines += [f"• `{escape(x['instance'])}` {escape(x['why'])}"
                      for x in fleet["left_out"]]
    if f.get("enis"):
        lines.append(f"*Network interfaces* ({len(f['enis'])})")
        lines += [describe_eni(e) for e in f["enis"]]
    blast = f.get("blast") or {}
    if blast:
        others = blast.get("others", [])
        lines.append(f"*Blast radius* ({len(others)} other instances)")
        lines += [f"• {escape(o.get('name') or '(no Name tag)')} `{escape(o['id'])}`"
                  for o in others]
        lines.append(f"*What changes* ({len(blast.get('changes', []))})")
        lines += [f"• {escape(c)}" for c in blast.get("changes", [])]
        if blast.get("still_open"):
            lines.append("*Default routes that stay*")
            lines += [f"• {escape(c)}" for c in blast["still_open"]]
    if f.get("key_id"):
        for label, key in (("Attached policies", "attached_policies"),
                           ("Inline policies", "inline_policies")):
            lines.append(f"*{label}* ({len(f.get(key, []))})")
            lines += [f"• {escape(p)}" for p in f.get(key, [])]
        lines.append(f"*Other keys* ({len(f.get('other_keys', []))})")
        lines += [f"• `{escape(k['id'])}` ({escape(k['status'])})"
                  for k in f.get("other_keys", [])]
    if f.get("role_arn") and incident.kind != "release":
        lines.append(f"*Dry run* ({len(f.get('plan_lines', []))} changes)")
        lines += [f"• {escape(line)}" for line in f.get("plan_lines", [])]
        lines.append(f"*Running instances using it* ({len(f.get('role_instances', []))})")
        lines += [f"• `{escape(i['id'])}` ({escape(i['region'])})"
                  for i in f.get("role_instances", [])]
    if f.get("user_arn") and incident.kind != "release":
        lines.append(f"*Dry run* ({len(f.get('plan_lines', []))} changes)")
        lines += [f"• {escape(line)}" for line in f.get("plan_lines", [])]
        for label, key in (("Groups", "groups"), ("Attached policies", "attached_policies"),
                           ("Inline policies", "inline_policies")):
            lines.append(f"*{label}* ({len(f.get(key, []))})")
            lines += [f"• {escape(p)}" for p in f.get(key, [])]
    if f.get("undo"):
        lines.append("*Undo steps*")
        lines += [f"{n}. `{escape(name)}` — {escape(what)}"
                  for n, (name, what) in enumerate(f["undo"], 1)]
    if f.get("untracked_limits"):
        lines.append("*Not cut by security groups*")
        lines += [f"• {escape(n)}" for n in f["untracked_limits"]]
    parts: list[str] = []
    current = ""
    for line in lines:
        line = clip(line, PLAN_PART_MAX)
        if current and len(current) + 1 + len(line) > PLAN_PART_MAX:
            parts.append(current)
            current = ""
        current = f"{current}\n{line}" if current else line
    parts.append(current)
    if len(parts) > 1:
        parts = [f"{p}\n_(part {n} of {len(parts)})_" for n, p in enumerate(parts, 1)]
    return parts


# thread ------------------------------------------------------------------------------


def render_run_started(incident: Incident, resumed: bool) -> str:
    what = f"`{incident.playbook}` on `{incident.target_id}`"
    if resumed:
        return (f"▶️ Resuming {what} after an interruption; finished steps are skipped.")
    if incident.auto_rule:
        return (f"🤖 Isolating automatically (rule `{escape(incident.auto_rule)}`): running "
                f"{what}. Approvers: *Keep* or *Release* on the card once it has run.")
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


def _console_line(text: str, region: str, facts: dict[str, Any] | None = None) -> str:
    ids = ids_in_text(text)
    return f"\n🔗 {linked(ids, region, facts, limit=1000)}" if region and ids else ""


# Slack's recommended ceiling for a message's text: a longer step result is cut here, and
# the whole of it is in the record (`/contain status`, `/contain export`).
THREAD_MAX = 4000
_CUT = " … (cut here: the whole result is in `/contain export`)"


def _fit(text: str | None, limit: int) -> str:
    """Escaped, within `limit` characters (cut before escaping, so no entity is split)."""
    raw = text or ""
    if len(escape(raw)) <= limit:
        return escape(raw)
    while len(escape(raw)) + len(_CUT) > limit:
        raw = raw[:max(0, len(raw) - max(1, len(escape(raw)) + len(_CUT) - limit))]
    return escape(raw) + _CUT


def render_step(step: StepRecord, region: str = "", facts: dict[str, Any] | None = None
                ) -> str:
    """A step's reply in the thread; with the region, console links to what it names.
    Within THREAD_MAX characters, however many ENIs or entries the step went through."""
    details = step.details or {}
    mentioned = " ".join([step.summary or "", str(details.get("verified") or ""),
                          *[x.get("id", "") for x in details.get("snapshots", [])],
                          str(details.get("image") or "")])
    return _render_step(step) + _console_line(mentioned, region, facts)


def _render_step(step: StepRecord) -> str:
    icon = STEP_ICON.get(step.status, "")
    took = f" ({_duration(step.duration_ms)})" if step.duration_ms is not None else ""
    if step.status == StepStatus.FAILED:
        line = f"{icon} *{step.name}* failed — `{escape(step.error_code or '?')}`: " \
               f"{_fit(step.error_message, 1200)}"
        line += f"\nDone before the failure: {_fit(step.summary, 1200)}" if step.summary \
            else "\nNothing was changed by this step."
        return line + took
    verified = (step.details or {}).get("verified")
    line = f"{icon} *{step.name}* — {_fit(step.summary, 2000)}{took}"
    if verified:
        line += f"\n_verified: {_fit(str(verified), 400)}_"
    return line


def render_run_finished(incident: Incident) -> str:
    icon = STATUS_ICON.get(incident.status, "")
    label = FINAL_LABEL.get(incident.status, incident.status.capitalize())
    timed = durations_line(incident)
    return (f"{icon} *{label}* — {_fit(incident.summary, THREAD_MAX - 400)}"
            + (f"\n{timed}" if timed else ""))


MEMBER_SUMMARY_MAX = 600


def render_member_finished(member: Incident) -> str:
    """One line in the fleet's thread when one of its instances has ended."""
    icon = STATUS_ICON.get(member.status, "")
    label = FINAL_LABEL.get(member.status, member.status.capitalize())
    name = (member.facts or {}).get("name") or ""
    named = f" ({escape(name)})" if name else ""
    return (f"{icon} `{escape(member.target_id)}`{named} — *{label}* ({member.id}): "
            f"{_fit(member.summary, MEMBER_SUMMARY_MAX)}")


def render_fleet_started(fleet: Incident, members: Sequence[Incident]) -> str:
    who = f"<@{fleet.decided_by}>" if fleet.decided_by else "the approvers"
    if fleet.playbook == "release":
        return (f"▶️ Approved by {who}: releasing {len(members)} instances, each its own "
                "release. One line here per instance as it ends; the card counts them.")
    return (f"▶️ Approved by {who}: `{fleet.playbook}` on {len(members)} instances, each its "
            "own incident — every cut first, at the rate AWS allows, then the evidence. One "
            "line here per instance as it ends; the card counts them.")


def render_fleet_finished(fleet: Incident, members: Sequence[Incident]) -> str:
    icon = STATUS_ICON.get(fleet.status, "")
    label = FINAL_LABEL.get(fleet.status, fleet.status.capitalize())
    undoing = fleet.playbook == "release"
    not_done = [m for m in members if m.status != (RELEASED if undoing else CONTAINED)]
    lines = [f"{icon} *Fleet {label.lower()}* — {fleet_progress(members)}."]
    if not_done:
        lines.append(fit_lines(
            f"Not {'released' if undoing else 'contained'} (see each with "
            "`/contain status ID`):",
            [f"• `{escape(m.target_id)}` {m.id} — {escape(m.status)}" for m in not_done],
            THREAD_MAX - 400))
    if not undoing:
        lines.append(f"Release one with `/contain release INSTANCE`, or every instance with "
                     f"`/contain release {fleet.id}`.")
    return "\n".join(lines)


# automatic containment and the watch --------------------------------------------------


def render_auto_reviewed(follow: Incident, user: str) -> str:
    if follow.kind == "release":
        return f"↩️ <@{user}> released this automatic containment: {follow.id} undoes it."
    return (f"👍 <@{user}> kept this automatic containment: `full` goes on as {follow.id} "
            "(its own card).")


def render_auto_reminder(incident: Incident) -> str:
    return (f"⏰ {incident.id}: `{escape(incident.target_id)}` was isolated automatically by "
            f"rule `{escape(incident.auto_rule or '')}` and nobody has reviewed it. An "
            "approver: *Keep* (go on with `full`) or *Release* on the card.")


WATCH_LINES = 12


def render_watch_found(incident: Incident, events: Sequence[Any], total: int) -> str:
    """What the watch found since its last message, grouped."""
    from playbooks.watch import group

    lines = []
    groups = group(events)
    for g in groups[:WATCH_LINES]:
        span = (f"{g['first']:%H:%M:%S}" if g["first"] == g["last"]
                else f"{g['first']:%H:%M:%S}–{g['last']:%H:%M:%S}")
        failed = f" → `{escape(g['error'])}`" if g["error"] else ""
        lines.append(f"• {g['count']} × `{escape(g['name'])}` ({escape(g['source'])}) from "
                     f"{escape(g['ip'])} in {escape(', '.join(sorted(g['regions'])))}, "
                     f"{span} UTC{failed}")
    more = len(groups) - WATCH_LINES
    if more > 0:
        lines.append(f"… and {more} more kinds (see CloudTrail)")
    return fit_lines(f"👁️ *Watch*: {len(events)} new CloudTrail event"
                     f"{'s' if len(events) != 1 else ''} by `{escape(incident.target_id)}` "
                     f"since the cut ({total} in all):", lines, THREAD_MAX - 200)


def render_watch_trouble(incident: Incident, errors: dict[str, str]) -> str:
    return ("⚠️ *Watch*: CloudTrail could not be read in full: "
            + "; ".join(f"{escape(r)} `{escape(why)}`" for r, why in sorted(errors.items()))
            + ". Tried again at the next check.")


def render_watch_ended(incident: Incident, total: int, minutes: int, released: bool) -> str:
    if released:
        return f"👁️ *Watch* stopped: the containment was released ({total} events seen)."
    if not total:
        return (f"👁️ *Watch*: quiet for {minutes} minutes — no CloudTrail activity by "
                f"`{escape(incident.target_id)}` since the cut.")
    return (f"👁️ *Watch* ended after {minutes} minutes: {total} CloudTrail event"
            f"{'s' if total != 1 else ''} by `{escape(incident.target_id)}` since the cut "
            "(see the messages above). Look for the same in other accounts and regions.")


class WatchVoice:
    found = staticmethod(render_watch_found)
    trouble = staticmethod(render_watch_trouble)
    ended = staticmethod(render_watch_ended)


# status and help ---------------------------------------------------------------------


def render_status_list(incidents: list[Incident]) -> str:
    if not incidents:
        return "No incidents yet."
    lines = ["*Recent incidents*"]
    for i in incidents:
        lines.append(f"{STATUS_ICON.get(i.status, '')} `{i.id}` `{i.target_id}` "
                     f"{i.playbook} — *{i.status}* — asked by {requester(i)} "
                     f"{slack_date(i.created_at)}")
    return "\n".join(lines)


def render_status_detail(report: IncidentReport) -> str:
    i = report.incident
    lines = [
        f"{STATUS_ICON.get(i.status, '')} *{i.id}* `{i.target_id}` ({escape(i.region)}) — "
        f"playbook `{i.playbook}` — *{i.status}*",
        f"Asked by {requester(i)} at {slack_date(i.created_at)}: "
        f"{escape(i.reason) or '_(no reason)_'}",
    ]
    for d in report.decisions:
        who = "🤖 the rule" if d.user_id == RULE_DECIDER else f"<@{d.user_id}>"
        lines.append(f"• {who} {d.action} at {slack_date(d.at)} — {escape(d.outcome)}")
    for s in report.steps:
        took = f" ({_duration(s.duration_ms)})" if s.duration_ms is not None else ""
        err = f" `{escape(s.error_code)}`" if s.error_code else ""
        lines.append(f"{STEP_ICON.get(s.status, '')} {s.name} — {s.status}{err}{took}")
    if i.summary:
        lines.append(f"Summary: {escape(i.summary)}")
    timed = durations_line(i, report.steps)
    if timed and i.status not in (PENDING, DENIED, EXPIRED):
        lines.append(timed)
    return "\n".join(lines)


def render_help() -> str:
    names = ", ".join(f"`{p.name}` ({escape(p.summary)})"
                      for p in INSTANCE_PLAYBOOKS.values())
    # `<instance>` and the like are placeholders, not links: escaped, as every text is.
    return "\n".join([*(escape(line) for line in [
        "*Cordon — contain a compromised AWS instance, with approval and a timeline*",
        "`/contain` alone — a form: target, playbook, reason",
        "`/contain <instance> [playbook] [region=R] [account=A] [reason…]` — ask to contain; "
        "the instance by id, ARN, private IP or exact Name tag (`name=…` or in quotes)",
        "  e.g. `/contain i-0abc123def4567890 isolate suspected crypto-miner`",
        "  e.g. `/contain web-prod-3 isolate suspected crypto-miner`",
        "  e.g. `/contain i-0abc123def4567890 region=eu-west-1 outbound to known C2`",
        "`/contain key <access-key-id> [console=off] [reason…]` — a leaked access key: "
        "deactivate it, revoke its sessions, review what it did",
        "  e.g. `/contain key AKIAIOSFODNN7EXAMPLE found in a public repository`",
        "`/contain user <name|user-arn> [account=A] [reason…]` — a compromised IAM user: "
        "every credential deactivated, the console password deleted, older sessions denied",
        "  e.g. `/contain user build-agent credentials in a build log`",
        "`/contain role <name|role-arn> [trust=deny] [account=A] [reason…]` — a compromised "
        "IAM role: every session issued before now denied; trust=deny: nobody may assume it",
        "`/contain bucket <name|bucket-arn> [account=A] [reason…]` — an exposed S3 bucket: "
        "public access blocked, ACLs off, everyone but the allow-list denied",
        "`/contain release <instance-id|key-id|user-arn|incident-id> [reason…]` — undo a "
        "containment "
        "(approval required)",
        "`/contain status [instance-id|incident-id]` — what happened, who did what, when",
        "  e.g. `/contain status CRD-7Q2M4K`",
        "  e.g. `/contain i-0abc123def4567890 nacl mode=insert the whole subnet beacons out`",
        "`/contain help` — this text"]),
        f"Playbooks: {names}.",
        "An on-call approver (not the requester) must press *Approve* on the card; "
        "`nacl`, `route` and `igw` hit a whole subnet or VPC and need more than one.",
    ])


def error_text(error: str | Exception) -> str:
    """An error's message in mrkdwn: escaped whole (it may repeat what someone typed),
    the person who decided shown as a mention."""
    text = escape(str(error))
    by = getattr(error, "by", None)
    if by:
        text = text.replace(escape(by), f"<@{by}>")
    return text


def render_error(error: str | Exception) -> str:
    return f"⚠️ {error_text(error)}"
