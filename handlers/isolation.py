"""Network isolation with security groups, without leaving tracked connections alive.

Removing rules does not end *tracked* connections. Moving every ENI first to a group
that allows everything (so every flow becomes untracked) and then to a group with no
rules at all ends them. The two groups exist once per VPC, found by tag, created only
when missing and reused by every containment in that VPC."""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from botocore.exceptions import ClientError

from handlers.aws import Clients, both, describe_error, parallel
from handlers.base import Action, Outcome, StepContext, StepFailed, VerificationFailed, register
from handlers.ec2_lookup import describe_instance

OPEN, SEALED = "isolation-open", "isolation-sealed"
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


@register
class IsolateSecurityGroups(Action):
    name = "isolate-security-groups"
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
        if "observed" not in ctx.memo:
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
            ctx.memo["observed"] = (inst, pair)
        observed: tuple[dict[str, Any], dict[str, dict[str, Any]]] = ctx.memo["observed"]
        return observed

    def check(self, ctx: StepContext) -> bool:
        inst, pair = self._observe(ctx)
        sealed = pair.get(SEALED)
        if not sealed or not is_sealed(sealed):
            return False
        enis = inst.get("NetworkInterfaces", [])
        return bool(enis) and all(
            [g["GroupId"] for g in e.get("Groups", [])] == [sealed["GroupId"]] for e in enis
        )

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        inst, _ = self._observe(ctx)
        return {
            "vpc_id": inst.get("VpcId", ""),
            "enis": [
                {
                    "id": e["NetworkInterfaceId"],
                    "private_ip": e.get("PrivateIpAddress", ""),
                    "groups": [{"id": g["GroupId"], "name": g.get("GroupName", "")}
                               for g in e.get("Groups", [])],
                    "conntrack": e.get("ConnectionTrackingConfiguration") or {},
                }
                for e in sorted(inst.get("NetworkInterfaces", []),
                                key=lambda e: e.get("Attachment", {}).get("DeviceIndex", 0))
            ],
        }

    def prepare(self, ctx: StepContext) -> None:
        """The isolation groups touch no instance: they can be made ready early."""
        _, pair = self._observe(ctx)
        vpc_id = ctx.memo["observed"][0].get("VpcId", "")
        if vpc_id:
            ctx.memo["groups"] = ensure_group_pair(ctx.clients, vpc_id, pair,
                                                   ctx.target.incident_id)

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        _, pair = self._observe(ctx)
        ec2 = ctx.clients.ec2
        enis = captured["enis"]
        if not enis:
            raise StepFailed("NoNetworkInterfaces", "the instance has no network interface")
        ids, created = ctx.memo.get("groups") or ensure_group_pair(
            ctx.clients, captured["vpc_id"], pair, ctx.target.incident_id)
        open_id, sealed_id = ids[OPEN], ids[SEALED]
        position = {e["id"]: "original groups" for e in enis}
        conntrack_notes: list[str] = []

        def move(eni_id: str, group_id: str, label: str) -> None:
            try:
                ec2.modify_network_interface_attribute(NetworkInterfaceId=eni_id,
                                                       Groups=[group_id])
            except Exception as exc:
                err = describe_error(exc)
                raise StepFailed(err.code, f"{eni_id}: {err.message}", _where(position)) from exc
            position[eni_id] = label

        def lower_conntrack(eni_id: str) -> None:
            try:
                ec2.modify_network_interface_attribute(
                    NetworkInterfaceId=eni_id, ConnectionTrackingSpecification=CONNTRACK_MINIMUM
                )
            except Exception as exc:  # not every instance type supports it: note and go on
                conntrack_notes.append(f"{eni_id}: {describe_error(exc).code}")

        # Round trip 1: every ENI to the open group, and the timeouts lowered, at once.
        parallel(lambda job: job(), [
            *[(lambda e=e: move(e["id"], open_id, "cordon-open")) for e in enis],
            *[(lambda e=e: lower_conntrack(e["id"])) for e in enis],
        ])
        # Round trip 2: every ENI to the sealed group.
        parallel(lambda e: move(e["id"], sealed_id, "cordon-sealed"), enis)

        moves = "; ".join(
            f"{e['id']} {','.join(_group_label(g) for g in e['groups']) or '(none)'}"
            " → cordon-sealed" for e in enis
        )
        summary = moves
        if conntrack_notes:
            summary += f"; conntrack timeouts not lowered ({', '.join(conntrack_notes)})"
        else:
            summary += "; conntrack timeouts 60/60/30 s"
        if created:
            summary += f"; created isolation groups {', '.join(created)}"
        return Outcome(summary, {"open_group": open_id, "sealed_group": sealed_id,
                                 "created_groups": created, "conntrack_notes": conntrack_notes})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        sealed_id = outcome.details["sealed_group"]
        inst, groups = both(
            lambda: describe_instance(ctx.clients, ctx.target.resource_id),
            lambda: ctx.clients.ec2.describe_security_groups(GroupIds=[sealed_id]),
        )
        if inst is None:
            raise VerificationFailed("the instance disappeared during isolation")
        sealed = groups["SecurityGroups"][0]
        problems = []
        if not is_sealed(sealed):
            problems.append(f"{sealed_id} has rules")
        for eni in inst.get("NetworkInterfaces", []):
            got = [g["GroupId"] for g in eni.get("Groups", [])]
            if got != [sealed_id]:
                problems.append(f"{eni['NetworkInterfaceId']} is on {','.join(got) or 'nothing'}")
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


def _where(position: dict[str, str]) -> str:
    return "; ".join(f"{eni} on {where}" for eni, where in position.items())
