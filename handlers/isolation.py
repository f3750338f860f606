"""Network isolation with security groups, without leaving tracked connections alive.

Removing rules does not end *tracked* connections. Moving every ENI first to a group
that allows everything (so every flow becomes untracked) and then to a group with no
rules at all ends them. The two groups exist once per VPC, found by tag, created only
when missing and reused by every containment in that VPC."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from handlers.aws import Clients
from handlers.base import (
    GATE_PENDING,
    Action,
    Gate,
    Outcome,
    StepContext,
    StepFailed,
    StepHeld,
    VerificationFailed,
)
from handlers.ec2_lookup import describe_instance, interfaces, off_group
from handlers.eni_cut import Do, EniCutMachine, Event, State
from handlers.fanout import both, parallel
from handlers.lease import LeaseLost, fail_safe, run_guard_check, taken_over_check
from handlers.pacing import CUT_EXTRA, LEAVE_OPEN, pair, urgency
from handlers.retry import Backoff, describe_error

OPEN, SEALED = "isolation-open", "isolation-sealed"
# Why an ENI of the card is put back instead of sealed.
NOT_ATTACHED = "no longer attached to the instance"
GROUP_NAMES = {OPEN: "cordon-open", SEALED: "cordon-sealed"}
GROUP_DESCRIPTIONS = {
    OPEN: "Cordon isolation step 1: allows everything so tracked flows become untracked",
    SEALED: "Cordon isolation step 2: no rules, no traffic",
}
ALL_TRAFFIC_V4 = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
ALL_TRAFFIC_V6 = {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
# The lowest connection-tracking timeouts EC2 accepts (seconds).
CONNTRACK_MINIMUM = {"TcpEstablishedTimeout": 60, "UdpStreamTimeout": 60, "UdpTimeout": 30}
CONNTRACK_DEFAULT = {"TcpEstablishedTimeout": 432000, "UdpStreamTimeout": 180, "UdpTimeout": 30}

log = logging.getLogger("cordon.isolation")

_vpc_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


def _role(group: dict[str, Any]) -> str | None:
    tags = {t["Key"]: t["Value"] for t in group.get("Tags", [])}
    if tags.get("cordon:managed") != "true":
        return None
    role = tags.get("cordon:role")
    return role if role in (OPEN, SEALED) else None


def find_group_pair(clients: Clients, vpc_id: str) -> dict[str, dict[str, Any]]:
    """The VPC's isolation groups by role (one describe call)."""
    resp = clients.ec2.describe_security_groups(
        Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "tag:cordon:managed", "Values": ["true"]},
            {"Name": "tag:cordon:role", "Values": [OPEN, SEALED]},
        ]
    )
    found: dict[str, dict[str, Any]] = {}
    for group in sorted(resp.get("SecurityGroups", []), key=lambda g: g["GroupId"]):
        role = _role(group)
        if role and role not in found:
            found[role] = group
    return found


def _has_all_traffic(perms: list[dict[str, Any]]) -> tuple[bool, bool]:
    v4 = v6 = False
    for p in perms:
        if p.get("IpProtocol") != "-1":
            continue
        v4 = v4 or any(r.get("CidrIp") == "0.0.0.0/0" for r in p.get("IpRanges", []))
        v6 = v6 or any(r.get("CidrIpv6") == "::/0" for r in p.get("Ipv6Ranges", []))
    return v4, v6


def is_sealed(group: dict[str, Any]) -> bool:
    return not group.get("IpPermissions") and not group.get("IpPermissionsEgress")


def _open_fixes(group: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    fixes = []
    in4, in6 = _has_all_traffic(group.get("IpPermissions", []))
    out4, out6 = _has_all_traffic(group.get("IpPermissionsEgress", []))
    for present, direction, perm in (
        (in4, "ingress", ALL_TRAFFIC_V4),
        (in6, "ingress", ALL_TRAFFIC_V6),
        (out4, "egress", ALL_TRAFFIC_V4),
        (out6, "egress", ALL_TRAFFIC_V6),
    ):
        if not present:
            fixes.append((direction, perm))
    return fixes


def _sealed_fixes(group: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    fixes: list[tuple[str, dict[str, Any]]] = []
    for perm in group.get("IpPermissions", []):
        fixes.append(("revoke-ingress", _strip(perm)))
    for perm in group.get("IpPermissionsEgress", []):
        fixes.append(("revoke-egress", _strip(perm)))
    return fixes


def _strip(perm: dict[str, Any]) -> dict[str, Any]:
    keep = ("IpProtocol", "FromPort", "ToPort", "IpRanges", "Ipv6Ranges", "PrefixListIds",
            "UserIdGroupPairs")
    out = {k: v for k, v in perm.items() if k in keep and v not in (None, [])}
    if "UserIdGroupPairs" in out:
        out["UserIdGroupPairs"] = [{"GroupId": p["GroupId"]} for p in out["UserIdGroupPairs"]]
    return out


def _fresh_group(role: str, group_id: str, vpc_id: str) -> dict[str, Any]:
    """What EC2 gives a new VPC group: no ingress, egress to 0.0.0.0/0 only."""
    return {
        "GroupId": group_id,
        "GroupName": GROUP_NAMES[role],
        "VpcId": vpc_id,
        "IpPermissions": [],
        "IpPermissionsEgress": [dict(ALL_TRAFFIC_V4)],
        "Tags": _tags(role, ""),
    }


def _tags(role: str, incident_id: str) -> list[dict[str, str]]:
    tags = [
        {"Key": "cordon:managed", "Value": "true"},
        {"Key": "cordon:role", "Value": role},
        {"Key": "Name", "Value": GROUP_NAMES[role]},
    ]
    if incident_id:
        tags.append({"Key": "cordon:created-for", "Value": incident_id})
    return tags


def _create_group(
    clients: Clients, vpc_id: str, role: str, incident_id: str
) -> tuple[dict[str, Any], bool]:
    try:
        resp = clients.ec2.create_security_group(
            GroupName=GROUP_NAMES[role],
            Description=GROUP_DESCRIPTIONS[role],
            VpcId=vpc_id,
            TagSpecifications=[
                {"ResourceType": "security-group", "Tags": _tags(role, incident_id)}
            ],
        )
    except ClientError as exc:
        if describe_error(exc).code != "InvalidGroup.Duplicate":
            raise
        # Another containment in this VPC created it a moment ago: use theirs,
        # and describe it, since its rules may not be in place yet.
        resp = clients.ec2.describe_security_groups(
            Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "group-name", "Values": [GROUP_NAMES[role]]},
            ]
        )
        group: dict[str, Any] = resp["SecurityGroups"][0]
        if _role(group) != role:
            raise StepFailed(
                "IsolationGroupConflict",
                f"{group['GroupId']} is named {GROUP_NAMES[role]} but is not tagged "
                f"cordon:role={role}; rename or tag it",
            ) from exc
        return group, False
    return _fresh_group(role, resp["GroupId"], vpc_id), True


def _apply_fix(clients: Clients, group_id: str, fix: tuple[str, dict[str, Any]]) -> None:
    kind, perm = fix
    ec2 = clients.ec2
    calls = {
        "ingress": ec2.authorize_security_group_ingress,
        "egress": ec2.authorize_security_group_egress,
        "revoke-ingress": ec2.revoke_security_group_ingress,
        "revoke-egress": ec2.revoke_security_group_egress,
    }
    try:
        calls[kind](GroupId=group_id, IpPermissions=[perm])
    except ClientError as exc:
        # Already in the state we want: someone else got there first.
        if describe_error(exc).code not in ("InvalidPermission.Duplicate",
                                            "InvalidPermission.NotFound"):
            raise


def ensure_group_pair(
    clients: Clients, vpc_id: str, known: dict[str, dict[str, Any]], incident_id: str = ""
) -> tuple[dict[str, str], list[str]]:
    """Make sure the VPC has both isolation groups with the right rules.

    `known` is what describe found. Missing groups are created together (one round
    trip), then every rule change is made together (one more). Returns the group ids
    by role and the ids of the groups created."""
    groups = dict(known)
    created: list[str] = []
    missing = [role for role in (OPEN, SEALED) if role not in groups]
    if missing:
        with _vpc_locks[vpc_id]:
            made = parallel(lambda role: _create_group(clients, vpc_id, role, incident_id),
                            missing)
        for role, (group, is_new) in zip(missing, made, strict=True):
            groups[role] = group
            if is_new:
                created.append(group["GroupId"])
    fixes = [(groups[OPEN]["GroupId"], f) for f in _open_fixes(groups[OPEN])]
    fixes += [(groups[SEALED]["GroupId"], f) for f in _sealed_fixes(groups[SEALED])]
    parallel(lambda item: _apply_fix(clients, item[0], item[1]), fixes)
    return {OPEN: groups[OPEN]["GroupId"], SEALED: groups[SEALED]["GroupId"]}, created


PREPARE_PERMISSIONS = ("ec2:DescribeVpcs",)


def prepare_vpcs(clients: Clients, vpc_ids: list[str] | None = None) -> list[dict[str, Any]]:
    """Create the isolation groups ahead of time (`python -m bot prepare`)."""
    if not vpc_ids:
        vpc_ids = [v["VpcId"] for v in clients.ec2.describe_vpcs().get("Vpcs", [])]

    def one(vpc_id: str) -> dict[str, Any]:
        ids, created = ensure_group_pair(clients, vpc_id, find_group_pair(clients, vpc_id))
        return {"vpc_id": vpc_id, "open": ids[OPEN], "sealed": ids[SEALED], "created": created}

    return parallel(one, vpc_ids)


def _group_label(group: dict[str, Any]) -> str:
    return str(group.get("name") or group["id"])


class IsolateSecurityGroups(Action):
    name = "isolate-security-groups"
    # A failed cut may leave some ENIs sealed (never on the open group): a release
    # puts them back on their own groups.
    partial_undo = True
    description = ("every ENI to cordon-open, then to cordon-sealed (ends tracked "
                   "connections); connection-tracking timeouts lowered")
    permissions = (
        "ec2:DescribeInstances",
        "ec2:DescribeSecurityGroups",
        "ec2:CreateSecurityGroup",
        "ec2:CreateTags",
        "ec2:AuthorizeSecurityGroupIngress",
        "ec2:AuthorizeSecurityGroupEgress",
        "ec2:RevokeSecurityGroupIngress",
        "ec2:RevokeSecurityGroupEgress",
        "ec2:ModifyNetworkInterfaceAttribute",
    )

    def _observe(self, ctx: StepContext) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        return ctx.remember("observed", lambda: self._look(ctx))

    def _look(self, ctx: StepContext) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        vpc_id = ctx.target.facts.get("vpc_id", "")
        inst, pair = both(
            lambda: describe_instance(ctx.clients, ctx.target.resource_id),
            lambda: find_group_pair(ctx.clients, vpc_id) if vpc_id else {},
        )
        if inst is None:
            raise StepFailed("InvalidInstanceID.NotFound",
                             f"{ctx.target.resource_id} no longer exists")
        if inst.get("VpcId") and inst["VpcId"] != vpc_id:
            pair = find_group_pair(ctx.clients, inst["VpcId"])
        return (inst, pair)

    def check(self, ctx: StepContext) -> bool:
        inst, pair = self._observe(ctx)
        sealed = pair.get(SEALED)
        if not sealed or not is_sealed(sealed):
            return False
        return not off_group(inst, sealed["GroupId"])

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        inst, _ = self._observe(ctx)
        return {"vpc_id": inst.get("VpcId", ""), "enis": interfaces(inst)}

    def observe_early(self, ctx: StepContext) -> dict[str, Any] | None:
        """At card time: the ENIs and their groups from the card's look-up, and the VPC's
        isolation groups made ready (found, created or fixed — Cordon's own groups, the
        one change allowed before approval). After the click the cut goes out at once."""
        facts = ctx.target.facts
        vpc_id, enis = facts.get("vpc_id", ""), facts.get("enis") or []
        if not vpc_id or not enis:
            return None
        ids, created = ensure_group_pair(ctx.clients, vpc_id, find_group_pair(ctx.clients, vpc_id))
        if any(g["id"] in ids.values() for e in enis for g in e["groups"]):
            return None  # already on Cordon's groups: look again after the click
        return {"vpc_id": vpc_id, "enis": enis, "open_group": ids[OPEN],
                "sealed_group": ids[SEALED], "created_groups": created}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        """Each ENI on its own: to cordon-open, then at once to cordon-sealed, so that an
        ENI spends one round trip on the allow-all group; its connection-tracking
        timeouts are lowered once it is sealed. The seal retries with backoff; an ENI that
        still cannot be sealed goes back to its recorded groups. Whatever happens, no
        ENI is left on cordon-open, and a failure reports where each ENI is, from a
        describe made after the fact.

        With the groups made ready and the ENIs recorded when the card was made, nothing
        is described before the first move: the instance and the groups are described
        alongside it, and what changed since the card (an ENI attached, a group with a
        rule added or deleted) is dealt with after the cut.

        Under a burst (EC2's request bucket for ModifyNetworkInterfaceAttribute busy, see
        handlers.pacing) the lowering of the timeouts waits for tokens in the background
        once the interface is sealed, and is not taken up again should the process die
        meanwhile: the cut itself is done and recorded; only the shorter idle timeouts of
        the flows the seal cannot end are lost.

        What real AWS does that moto does not show: tracked connections (those not
        allowed by an all-traffic 0.0.0.0/0 rule in both directions) survive a change
        of rules; moving to the open group first makes them untracked, and the sealed
        group then drops them. ICMP and flows through a NAT gateway, NLB, Gateway Load
        Balancer or Transit Gateway stay tracked whatever the groups say."""
        enis = captured["enis"]
        if not enis:
            raise StepFailed("NoNetworkInterfaces", "the instance has no network interface")
        notes: list[str] = []
        if captured.get("sealed_group"):
            ids = {OPEN: captured["open_group"], SEALED: captured["sealed_group"]}
            created = list(captured.get("created_groups") or [])
            # The describe goes out with the first moves; each seal waits for it as well
            # as for the detach (both answer in that same round trip), so that an ENI
            # moved to another instance since the card is put back, never sealed.
            looked = threading.Event()
            seen_box: list[Any] = [None]

            regrouped: list[str] = []

            def look() -> Any:
                try:
                    seen_box[0] = _look_again(ctx, ids)
                    regrouped.extend(_groups_at_click(captured["enis"], seen_box[0], ids))
                finally:
                    looked.set()
                return seen_box[0]

            def gate(eni_id: str, timeout: float | None) -> str | None:
                held = ctx.gate(timeout)
                if held:
                    return held
                # The describe is an extra check, never a reason to stay open longer.
                looked.wait(LOOK_WAIT)
                seen = seen_box[0]
                if seen is not None and seen[0] is not None and eni_id not in {
                        e["NetworkInterfaceId"] for e in seen[0].get("NetworkInterfaces", [])}:
                    return NOT_ATTACHED
                return None

            seen, cuts = both(look, lambda: self._cut(ctx, enis, ids, gate))
            if regrouped:
                ctx.save(captured)  # what a release puts back: the groups at the click
                notes.append(f"groups changed since the card on {', '.join(regrouped)}: "
                             "any move back, and the release, use those at the click")
            gone = [c for c in cuts if c.held == NOT_ATTACHED]
            if gone:
                cuts = [c for c in cuts if c.held != NOT_ATTACHED]
                ids_gone = {c.eni_id for c in gone}
                captured["enis"] = [e for e in captured["enis"] if e["id"] not in ids_gone]
                ctx.save(captured)  # not this instance's to restore on release
                notes.append("; ".join(
                    f"{c.eni_id} was moved to another instance since the card: "
                    + ("put back on its own groups, not cut" if c.restored
                       else f"NOT put back ({c.error})") for c in gone))
            cuts, ids, more = self._after_card(ctx, captured, cuts, ids, seen, notes)
            created += more
        else:
            _, pair = self._observe(ctx)
            ids, created = ensure_group_pair(ctx.clients, captured["vpc_id"], pair,
                                             ctx.target.incident_id)
            cuts = self._cut(ctx, enis, ids)
        cuts = self._cross_again_if_unconfirmed(ctx, captured, cuts, ids, notes)
        open_id, sealed_id = ids[OPEN], ids[SEALED]
        held = [c for c in cuts if c.held]
        failed = [c for c in cuts if not c.sealed and not c.held]
        if held or failed:
            where = describe_positions(ctx.clients, ctx.target.resource_id, open_id, sealed_id,
                                       captured["enis"])
            if held and not failed and all(c.restored for c in held):
                raise StepHeld(f"{held[0].held} failed: not cut", where)
            first = (failed or held)[0]
            raise StepFailed(first.error_code or "Held", "could not seal " + "; ".join(
                f"{c.eni_id} ({c.error or 'held: ' + c.held})" for c in failed or held), where)
        conntrack_notes = [f"{c.eni_id}: {c.conntrack_error}" for c in cuts
                           if c.conntrack_error]
        moves = "; ".join(
            f"{e['id']} {','.join(_group_label(g) for g in e['groups']) or '(none)'}"
            " → cordon-sealed" for e in captured["enis"]
        )
        summary = moves
        later = [c.eni_id for c in cuts if c.conntrack_later]
        if conntrack_notes:
            summary += f"; conntrack timeouts not lowered ({', '.join(conntrack_notes)})"
        elif later:
            summary += ("; conntrack timeouts being lowered to 60/60/30 s behind the other "
                        "containments' moves (EC2's request bucket is busy)")
        else:
            summary += "; conntrack timeouts 60/60/30 s"
        if created:
            summary += f"; created isolation groups {', '.join(created)}"
        if notes:
            summary += "; " + "; ".join(notes)
        limits = ctx.target.facts.get("untracked_limits") or []
        if limits:
            summary += ". Not cut by security groups: " + "; ".join(limits)
        untracked = [c.eni_id for c in cuts if not c.converted]
        if untracked:
            # Sealed, but the crossing that makes tracked flows untracked is not known to
            # have happened: never reported as a conversion.
            raise StepFailed("NotConverted", f"{', '.join(untracked)} sealed without a "
                             "confirmed crossing of cordon-open: tracked connections may "
                             "survive until idle", summary)
        return Outcome(summary, {"open_group": open_id, "sealed_group": sealed_id,
                                 "created_groups": created, "conntrack_notes": conntrack_notes,
                                 "open_seconds": {c.eni_id: c.open_seconds for c in cuts}})

    def _cross_again_if_unconfirmed(self, ctx: StepContext, captured: dict[str, Any],
                                    cuts: list[EniCut], ids: dict[str, str],
                                    notes: list[str]) -> list[EniCut]:
        """An ENI sealed after an open move whose answer never came (or that failed) is
        sealed, not known severed: it crosses once more, open → sealed, off the path to
        the cut (it is sealed meanwhile)."""
        unsure = [c for c in cuts if c.sealed and not c.converted]
        if unsure:
            notes.append(f"crossed again: the first crossing of "
                         f"{', '.join(c.eni_id for c in unsure)} was not confirmed")
        return self._cross_again(ctx, captured, cuts, ids, unsure)

    def _cross_again(self, ctx: StepContext, captured: dict[str, Any], cuts: list[EniCut],
                     ids: dict[str, str], which: list[EniCut]) -> list[EniCut]:
        """These sealed ENIs cross once more, open → sealed, each from where its machine
        left it; the other cuts stand."""
        machines = {c.eni_id: c.machine for c in which if c.machine is not None}
        if not machines:
            return cuts
        for machine in machines.values():
            machine.fire(Event.DRIFTED)
        again = self._cut(ctx, [e for e in captured["enis"] if e["id"] in machines], ids,
                          machines=machines)
        return [c for c in cuts if c.eni_id not in machines] + again

    def _cut(self, ctx: StepContext, enis: list[dict[str, Any]], ids: dict[str, str],
             gate: Callable[[str, float | None], str | None] | None = None,
             machines: dict[str, EniCutMachine] | None = None) -> list[EniCut]:
        def one(eni: dict[str, Any]) -> EniCut:
            def held(timeout: float | None = None) -> str | None:
                return (ctx.gate if gate is None else partial(gate, eni["id"]))(timeout)

            return cut_eni(ctx.clients, eni, ids[OPEN], ids[SEALED], held,
                           (machines or {}).get(eni["id"]))

        return parallel(one, enis)

    def _after_card(self, ctx: StepContext, captured: dict[str, Any], cuts: list[EniCut],
                    ids: dict[str, str], seen: tuple[dict[str, Any] | None, list[Any]] | None,
                    notes: list[str]) -> tuple[list[EniCut], dict[str, str], list[str]]:
        """What changed since the card, found by the describes made alongside the cut:
        groups deleted (made again, the ENIs cut again), an ENI attached since (recorded,
        then cut), an ENI's own groups changed (recorded), rules added to the sealed group
        (revoked) or removed from the open one (restored for next time)."""
        created: list[str] = []
        if seen is None:
            notes.append("the instance could not be described again alongside the cut; the "
                         "verify below checks every ENI")
            # Whether the open group was allow-all still matters: look at it now.
            try:
                groups = list(ctx.clients.ec2.describe_security_groups(
                    GroupIds=[ids[OPEN], ids[SEALED]])["SecurityGroups"])
            except Exception as exc:
                raise StepFailed(describe_error(exc).code, "cordon-open could not be checked "
                                 "after the cut: tracked connections may have survived"
                                 ) from exc
            return self._redo_if_drifted(ctx, captured, cuts, ids, groups, notes), ids, created
        inst, groups = seen
        refused = any(c.error_code == "InvalidGroup.NotFound" for c in cuts)
        if refused or len(groups) < 2:
            # The card's groups are gone (the moves were refused, or the describe beside
            # them found them missing): make them again, and cut again.
            ids, created = ensure_group_pair(ctx.clients, captured["vpc_id"],
                                             find_group_pair(ctx.clients, captured["vpc_id"]),
                                             ctx.target.incident_id)
            again = {c.eni_id for c in cuts if not c.sealed or not refused}
            redo = self._cut(ctx, [e for e in captured["enis"] if e["id"] in again], ids)
            cuts = [c for c in cuts if c.eni_id not in again] + redo
            notes.append("the isolation groups of the card were gone; made again")
            groups = []
        if inst is None:
            return cuts, ids, created
        known = {e["id"]: e for e in captured["enis"]}
        ours = set(ids.values()) | {captured["open_group"], captured["sealed_group"]}
        changed = False
        for eni in interfaces(inst):
            mine = {g["id"] for g in eni["groups"]}
            if eni["id"] not in known:
                known[eni["id"]] = eni
                captured["enis"].append(eni)
                changed = True
            elif not mine & ours and mine != {g["id"] for g in known[eni["id"]]["groups"]}:
                known[eni["id"]]["groups"] = eni["groups"]  # its groups changed since the card
                changed = True
        late = [e for e in captured["enis"] if e["id"] not in {c.eni_id for c in cuts}]
        if changed:
            ctx.save(captured)  # the prior state, before the late ENIs are touched
        if late:
            cuts = cuts + self._cut(ctx, late, ids)
            notes.append(f"attached since the card, cut too: {', '.join(e['id'] for e in late)}")
        return self._redo_if_drifted(ctx, captured, cuts, ids, groups, notes), ids, created

    def _redo_if_drifted(self, ctx: StepContext, captured: dict[str, Any], cuts: list[EniCut],
                         ids: dict[str, str], groups: list[dict[str, Any]], notes: list[str]
                         ) -> list[EniCut]:
        """The isolation groups as they were when the ENIs crossed them. Rules found on
        cordon-sealed are revoked. Rules missing from cordon-open (an auto-remediation
        that strips 0.0.0.0/0, say) mean the crossing made no flow untracked: the rules are
        restored and every ENI that crossed is cut again, open → sealed."""
        redo = False
        for group in groups:
            role = OPEN if group["GroupId"] == ids[OPEN] else SEALED
            fixes = _open_fixes(group) if role == OPEN else _sealed_fixes(group)
            if fixes:
                group_id = group["GroupId"]
                parallel(lambda fix: _apply_fix(ctx.clients, group_id, fix), fixes)  # noqa: B023
                redo = redo or role == OPEN
                notes.append(f"{GROUP_NAMES[role]} had drifted since the card"
                             + (" (rules found on it were removed)" if role == SEALED else
                                " (it did not allow all traffic: its rules are restored and "
                                "every ENI crossed it again)"))
        if not redo:
            return cuts
        return self._cross_again(ctx, captured, cuts, ids, [c for c in cuts if c.sealed])

    def in_place(self, captured: dict[str, Any]) -> bool:
        sealed = captured.get("sealed_group")
        return bool(sealed) and all([g["id"] for g in e["groups"]] == [sealed]
                                    for e in captured.get("enis") or [])

    def secure(self, ctx: StepContext, captured: dict[str, Any]) -> str | None:
        """Before anything else when a run resumes: an ENI found on cordon-open (its
        worker died between the two moves) is sealed now, or put back on its recorded
        groups if that cannot be done. Returns what was done, or None."""
        vpc_id = captured.get("vpc_id") or ctx.target.facts.get("vpc_id", "")
        if not vpc_id or not captured.get("enis"):
            return None
        inst, pair = both(lambda: describe_instance(ctx.clients, ctx.target.resource_id),
                          lambda: find_group_pair(ctx.clients, vpc_id))
        if inst is None or OPEN not in pair or SEALED not in pair:
            return None
        open_id, sealed_id = pair[OPEN]["GroupId"], pair[SEALED]["GroupId"]
        stranded = {e["NetworkInterfaceId"] for e in inst.get("NetworkInterfaces", [])
                    if open_id in [g["GroupId"] for g in e.get("Groups", [])]}
        if not stranded:
            return None
        recorded = [e for e in captured["enis"] if e["id"] in stranded]
        # Sealed only if what the seal waits for (the detach) had answered; else back.
        held = ctx.gate(None)
        with fail_safe():
            if held:
                cuts = parallel(lambda eni: put_back(ctx.clients, eni), recorded)
            else:
                cuts = parallel(lambda eni: seal_or_restore(ctx.clients, eni, sealed_id),
                                recorded)
        why = f" ({held} had not answered)" if held else ""
        return "; ".join(
            f"{c.eni_id} was on cordon-open: " + (
                "sealed" if c.sealed else f"back on its own groups{why}" if c.restored
                else f"NOT moved ({c.error})") for c in cuts)
    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        sealed_id = outcome.details["sealed_group"]
        inst, groups = both(
            lambda: describe_instance(ctx.clients, ctx.target.resource_id),
            lambda: ctx.clients.ec2.describe_security_groups(GroupIds=[sealed_id]),
        )
        if inst is None:
            raise VerificationFailed("the instance disappeared during isolation")
        sealed = groups["SecurityGroups"][0]
        problems = [] if is_sealed(sealed) else [f"{sealed_id} has rules"]
        problems += off_group(inst, sealed_id)
        if problems:
            raise VerificationFailed("; ".join(problems), "ENIs moved; see the mismatch")
        n = len(inst.get("NetworkInterfaces", []))
        return f"{n} ENI{'s' if n != 1 else ''} on {sealed_id} only; it has no rules"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ec2 = ctx.clients.ec2

        def restore(eni: dict[str, Any]) -> None:
            ec2.modify_network_interface_attribute(
                NetworkInterfaceId=eni["id"], Groups=[g["id"] for g in eni["groups"]]
            )
            conntrack = {k: v for k, v in (eni.get("conntrack") or {}).items()
                         if k in CONNTRACK_DEFAULT} or CONNTRACK_DEFAULT
            try:
                ec2.modify_network_interface_attribute(
                    NetworkInterfaceId=eni["id"], ConnectionTrackingSpecification=conntrack
                )
            except ClientError:
                pass  # the timeouts were never lowered on this instance type

        parallel(restore, captured["enis"])
        return Outcome("; ".join(
            f"{e['id']} → {','.join(_group_label(g) for g in e['groups'])}"
            for e in captured["enis"]
        ))


# Moving one ENI -------------------------------------------------------------------------

# How long an ENI's seal is retried before it goes back to its own groups, and how long
# that return is retried: leaving an ENI on the allow-all group is the one outcome a
# containment must never produce, so the way back is tried longest.
SEAL_RETRY = Backoff(attempts=8, base=0.2, cap=3.0)
RESTORE_RETRY = Backoff(attempts=12, base=0.2, cap=5.0)
# How long an ENI on cordon-open waits for the steps before its seal (the detach) before
# it goes back to its own groups to wait there; and for the describe sent beside its move.
SEAL_WAIT = 1.5
LOOK_WAIT = 1.0


@dataclass
class EniCut:
    eni_id: str
    sealed: bool = False
    restored: bool = False
    error: str = ""
    error_code: str = ""
    open_error: str = ""
    conntrack_error: str = ""
    conntrack_later: bool = False  # lowered in the background (a burst holds the bucket)
    open_seconds: float = 0.0
    # The critical step before the cut that failed: moved back instead of sealed.
    held: str = ""
    machine: EniCutMachine | None = None

    @property
    def converted(self) -> bool:
        """Sealed after crossing an allow-all cordon-open (its tracked flows ended)."""
        return self.machine is not None and self.machine.converted


def _move(clients: Clients, eni_id: str, group_ids: list[str], backoff: Backoff,
          unless_taken_over: bool = False) -> None:
    """One move, retried. A move back (`unless_taken_over`) first asks, at each attempt,
    whether another worker took the run over: a move back landing after the new owner
    sealed the ENI would undo the cut. (A lease lost to a database outage does not stop
    it; a takeover does, and the new owner moves the ENI from what it finds. A seal goes
    on: landing late, it only does what the new owner does.)"""
    def attempt() -> None:
        if unless_taken_over:
            taken_over_check()
        clients.ec2_cut.modify_network_interface_attribute(NetworkInterfaceId=eni_id,
                                                           Groups=group_ids)

    backoff.call(attempt)


def _look_again(ctx: StepContext, ids: dict[str, str]
                ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]] | None:
    """The instance and the isolation groups, described alongside the first move (never
    in front of it). None when they could not be described."""
    def pair() -> list[dict[str, Any]]:
        try:
            return list(ctx.clients.ec2.describe_security_groups(
                GroupIds=[ids[OPEN], ids[SEALED]])["SecurityGroups"])
        except ClientError as exc:
            if describe_error(exc).code == "InvalidGroup.NotFound":
                return []  # the moves fail on it too, and the groups are made again
            raise

    try:
        return both(lambda: describe_instance(ctx.clients, ctx.target.resource_id), pair)
    except LeaseLost:
        raise
    except Exception as exc:
        log.warning("could not describe alongside the cut",
                    extra={"error": describe_error(exc).code})
        return None


def _groups_at_click(enis: list[dict[str, Any]], seen: Any, ids: dict[str, str]) -> list[str]:
    """Record, in place, each ENI's groups as the describe sent with the first moves saw
    them, when they differ from the card's (tightened since, say): a move back must never
    be looser than at the click. An ENI the describe already saw on Cordon's groups (its
    move landed first) keeps the card's. Returns the ENIs whose groups changed."""
    inst = seen[0] if seen else None
    if inst is None:
        return []
    ours = set(ids.values())
    known = {e["id"]: e for e in enis}
    changed = []
    for eni in interfaces(inst):
        mine = [g["id"] for g in eni["groups"]]
        record = known.get(eni["id"])
        if record is None or set(mine) & ours or mine == [g["id"] for g in record["groups"]]:
            continue
        record["groups"] = eni["groups"]
        changed.append(eni["id"])
    return changed


def cut_eni(clients: Clients, eni: dict[str, Any], open_id: str, sealed_id: str,
            gate: Gate | None = None, machine: EniCutMachine | None = None) -> EniCut:
    """One ENI, driven by its state machine (`handlers.eni_cut`): to the open group, then
    to the sealed one once `gate` says the steps before the cut have answered (its
    timeouts lowered after). Should one of them have failed, the ENI goes back to its own
    groups instead; should they take longer than SEAL_WAIT (a throttled or settling
    detach), it goes back to wait there, and crosses again once they have answered: it
    never waits on the allow-all group."""
    result = EniCut(eni["id"])
    machine = machine or EniCutMachine()
    result.machine = machine

    def send_conntrack() -> None:
        # Paced behind every move and seal of the same bucket (handlers.pacing).
        with urgency(CUT_EXTRA):
            clients.ec2_cut.modify_network_interface_attribute(
                NetworkInterfaceId=eni["id"], ConnectionTrackingSpecification=CONNTRACK_MINIMUM)

    def lower_conntrack() -> None:
        try:
            send_conntrack()
        except LeaseLost:
            raise
        except Exception as exc:  # not every instance type supports it: note and go on
            result.conntrack_error = describe_error(exc).code

    def lower_conntrack_later() -> None:
        try:
            send_conntrack()
        except Exception as exc:  # after the step: a log line is all that is left to say
            log.warning("conntrack timeouts not lowered", extra={
                "eni": eni["id"], "error": describe_error(exc).code})

    lost: list[LeaseLost] = []

    def open_move() -> Event:
        sent = []

        def attempt() -> None:
            run_guard_check()  # a lost lease stops here, before anything is sent
            sent.append(True)
            clients.ec2_cut.modify_network_interface_attribute(
                NetworkInterfaceId=eni["id"], Groups=[open_id])

        try:
            SEAL_RETRY.call(attempt)
            return Event.OPENED
        except LeaseLost as exc:
            if not sent:
                raise
            # An earlier attempt may have landed: never leave it open. The worker stops
            # once the ENI is off the open group.
            lost.append(exc)
            machine.quitting = True
        except Exception as exc:
            # Still on its own groups, or (answer lost) on the open one: sealed anyway.
            result.open_error = describe_error(exc).code
        return Event.UNANSWERED

    def ask(timeout: float | None) -> Event:
        held = gate(timeout) if gate is not None else None
        if held == GATE_PENDING:
            return Event.SLOW
        if held:
            result.held = held
            return Event.HOLD
        return Event.GO

    def seal() -> Event:
        try:
            with fail_safe():
                _move(clients, eni["id"], [sealed_id], SEAL_RETRY)
            return Event.SEALED
        except Exception as exc:
            err = describe_error(exc)
            result.error, result.error_code = f"{err.code}: {err.message}", err.code
            return Event.SEAL_FAILED

    def back() -> Event:
        with fail_safe():
            # Crossing again, "back" is the sealed group it rested on a moment ago.
            moved = rest_sealed(clients, eni, sealed_id) if machine.again else \
                put_back(clients, eni)
        if moved.restored:
            return Event.BACK_DONE
        result.error = "; ".join(e for e in (result.error, moved.error) if e)
        result.error_code = result.error_code or "Held"
        return Event.BACK_FAILED

    opened_at: float | None = None

    def run(do: Do) -> None:
        nonlocal opened_at
        while do is not Do.NOTHING:
            if do is Do.OPEN:
                event = open_move()
                opened_at = time.monotonic()
            elif do is Do.ASK:
                event = ask(SEAL_WAIT)
            elif do is Do.ASK_LONG:
                event = ask(None)
            elif do is Do.SEAL:
                with urgency(LEAVE_OPEN):
                    event = seal()
            else:
                with urgency(LEAVE_OPEN):
                    event = back()
            if do in (Do.SEAL, Do.BACK) and opened_at is not None:
                result.open_seconds += time.monotonic() - opened_at
                opened_at = None
            do = machine.fire(event)

    # The move to the open group takes the token of the move off it too (pacing.pair).
    with pair("ModifyNetworkInterfaceAttribute"):
        run(machine.start())
    # The timeouts are lowered once it is sealed, off the path to the cut: the moves of
    # every interface of a burst take the bucket's tokens first (they share
    # ModifyNetworkInterfaceAttribute's), and the sealed interface's remaining tracked
    # flows are what the shorter idle timeouts end. Under a burst they wait for the
    # bucket in the background, so that the evidence of this run does not wait for them.
    if machine.cut:
        pacer = clients.pacer
        if pacer is not None and pacer.busy(clients.scope, clients.region,
                                            "ModifyNetworkInterfaceAttribute"):
            result.conntrack_later = True
            ctx = contextvars.copy_context()
            threading.Thread(target=ctx.run, args=(lower_conntrack_later,), daemon=True,
                             name=f"cordon-conntrack-{eni['id']}").start()
        else:
            lower_conntrack()
    result.sealed, result.restored = machine.cut, machine.state is State.BACK
    result.open_seconds = round(result.open_seconds, 3)
    if machine.state is State.STRANDED:
        log.error("ENI may be left on the open group", extra={"eni": eni["id"]})
    if lost:
        raise lost[0]
    return result


def rest_sealed(clients: Clients, eni: dict[str, Any], sealed_id: str) -> EniCut:
    """Back to cordon-sealed after a second crossing whose seal failed, retried longest:
    it was sealed before it crossed again."""
    result = EniCut(eni["id"])
    try:
        _move(clients, eni["id"], [sealed_id], RESTORE_RETRY)
        result.restored = True
    except Exception as exc:
        result.error = f"the return to cordon-sealed failed: {describe_error(exc)}"
    return result


def put_back(clients: Clients, eni: dict[str, Any]) -> EniCut:
    """Back to the groups recorded before Cordon touched it, retried longest."""
    result = EniCut(eni["id"])
    try:
        _move(clients, eni["id"], [g["id"] for g in eni["groups"]], RESTORE_RETRY,
              unless_taken_over=True)
        result.restored = True
    except Exception as exc:
        result.error = f"the return to its own groups failed: {describe_error(exc)}"
        log.error("ENI may be left on the open group", extra={"eni": eni["id"]})
    return result


def seal_or_restore(clients: Clients, eni: dict[str, Any], sealed_id: str) -> EniCut:
    """To the sealed group, retried with backoff; failing that, back to the groups
    recorded before Cordon touched it."""
    result = EniCut(eni["id"])
    try:
        _move(clients, eni["id"], [sealed_id], SEAL_RETRY)
        result.sealed = True
        return result
    except Exception as exc:
        err = describe_error(exc)
        result.error, result.error_code = f"{err.code}: {err.message}", err.code
    moved = put_back(clients, eni)
    result.restored = moved.restored
    if not moved.restored:
        result.error += f"; {moved.error}"
    return result


def describe_positions(clients: Clients, instance_id: str, open_id: str, sealed_id: str,
                       recorded: list[dict[str, Any]]) -> str:
    """Which groups each ENI is on now, described after the fact."""
    try:
        with fail_safe():
            inst = Backoff(attempts=4).call(lambda: describe_instance(clients, instance_id))
    except Exception as exc:
        return f"where each ENI is could not be described ({describe_error(exc).code})"
    if inst is None:
        return "the instance no longer exists"
    own = {e["id"]: sorted(g["id"] for g in e["groups"]) for e in recorded}
    names = {open_id: "cordon-open", sealed_id: "cordon-sealed"}
    lines = []
    for eni in inst.get("NetworkInterfaces", []):
        groups = eni.get("Groups", [])
        ids = sorted(g["GroupId"] for g in groups)
        label = ", ".join(names.get(g["GroupId"], g.get("GroupName") or g["GroupId"])
                          for g in groups) or "no group"
        if ids == [sealed_id]:
            label += " (sealed)"
        elif open_id in ids:
            label += " (ALLOWS ALL TRAFFIC)"
        elif ids == own.get(eni["NetworkInterfaceId"]):
            label += " (its own groups, as before)"
        lines.append(f"{eni['NetworkInterfaceId']} on {label}")
    return "described after the fact: " + "; ".join(lines)
