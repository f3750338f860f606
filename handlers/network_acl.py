"""Subnet isolation with a network ACL. NACLs are stateless: unlike security groups
they cut existing connections too — for every instance in the subnet."""

from __future__ import annotations

from functools import partial
from typing import Any

from botocore.exceptions import ClientError

from handlers.base import Action, Outcome, StepContext, StepFailed, VerificationFailed
from handlers.fanout import both, parallel
from handlers.retry import describe_error
from handlers.subnets import subnets_of

ROLE = "isolation-nacl"
MAX_RULES = 20  # EC2's default quota of rules per direction
# (rule offset, IPv4 CIDR, IPv6 CIDR): deny everything, both families.
DENY = ((0, "0.0.0.0/0", None), (1, None, "::/0"))


def _tags(incident_id: str) -> list[dict[str, str]]:
    return [{"Key": "cordon:managed", "Value": "true"}, {"Key": "cordon:role", "Value": ROLE},
            {"Key": "Name", "Value": "cordon-isolation"},
            {"Key": "cordon:created-for", "Value": incident_id}]


def _entry_args(rule: int, egress: bool, v4: str | None, v6: str | None) -> dict[str, Any]:
    args: dict[str, Any] = {"RuleNumber": rule, "Protocol": "-1", "RuleAction": "deny",
                            "Egress": egress}
    if v4:
        args["CidrBlock"] = v4
    else:
        args["Ipv6CidrBlock"] = v6
    return args


FAMILIES = (("CidrBlock", "0.0.0.0/0"), ("Ipv6CidrBlock", "::/0"))


def reachable_allows(acl: dict[str, Any]) -> list[dict[str, Any]]:
    """The allow entries some packet can still reach, evaluated as AWS does: per
    direction and address family, entries in rule-number order, the lowest matching
    rule decides. An allow numbered below the first deny of all traffic (every protocol,
    the whole family) lets something through; one above it is never reached."""
    reached = []
    for egress in (False, True):
        for key, everything in FAMILIES:
            entries = sorted((e for e in acl.get("Entries", [])
                              if e["Egress"] == egress and e.get(key)),
                             key=lambda e: e["RuleNumber"])
            for entry in entries:
                if entry["RuleAction"] == "allow":
                    reached.append(entry)
                elif str(entry.get("Protocol")) == "-1" and entry[key] == everything:
                    break  # nothing below this rule is ever reached
    return reached


def isolates(acl: dict[str, Any]) -> bool:
    """No packet in either direction, IPv4 or IPv6, can reach an allow entry."""
    return not reachable_allows(acl)


def _create_entry(ec2: Any, acl_id: str, args: dict[str, Any]) -> str | None:
    """Create one entry; an IPv6 entry in a VPC without IPv6 is noted, not fatal."""
    try:
        ec2.create_network_acl_entry(NetworkAclId=acl_id, **args)
    except ClientError as exc:
        if "Ipv6CidrBlock" in args and describe_error(exc).code.startswith("InvalidParameter"):
            return f"no IPv6 entry on {acl_id} ({describe_error(exc).code})"
        raise
    return None


def delete_entry(ec2: Any, acl_id: str, rule: int, egress: bool) -> None:
    try:
        ec2.delete_network_acl_entry(NetworkAclId=acl_id, RuleNumber=rule, Egress=egress)
    except ClientError as exc:
        if describe_error(exc).code != "InvalidNetworkAclEntry.NotFound":
            raise


def _lowest_free(entries: list[dict[str, Any]], egress: bool, count: int) -> list[int]:
    numbers = sorted(e["RuleNumber"] for e in entries
                     if e["Egress"] == egress and e["RuleNumber"] != 32767)
    if len(numbers) + count > MAX_RULES:
        return []
    lowest = numbers[0] if numbers else 32767
    free = [n for n in range(1, lowest) if n not in numbers][:count]
    return free if len(free) == count else []


class IsolateSubnetNacl(Action):
    name = "isolate-subnet-nacl"
    description = ("deny all traffic in and out of the instance's subnet(s) with a network "
                   "ACL — stateless: existing connections are cut too, for the whole subnet")
    permissions = ("ec2:DescribeNetworkAcls", "ec2:CreateNetworkAcl", "ec2:CreateNetworkAclEntry",
                   "ec2:DeleteNetworkAclEntry", "ec2:ReplaceNetworkAclAssociation",
                   "ec2:CreateTags")

    def _observe(self, ctx: StepContext) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return ctx.remember("observed", lambda: self._look(ctx))

    def _look(self, ctx: StepContext) -> tuple[dict[str, Any], dict[str, Any] | None]:
        ec2 = ctx.clients.ec2
        subnets = subnets_of(ctx.target.facts)
        acls, mine = both(
            lambda: ec2.describe_network_acls(Filters=[
                {"Name": "association.subnet-id", "Values": subnets}])["NetworkAcls"],
            lambda: ec2.describe_network_acls(Filters=[
                {"Name": "vpc-id", "Values": [ctx.target.facts.get("vpc_id", "")]},
                {"Name": "tag:cordon:role", "Values": [ROLE]}])["NetworkAcls"],
        )
        by_subnet = {a["SubnetId"]: {"association_id": a["NetworkAclAssociationId"],
                                     "nacl_id": acl["NetworkAclId"], "acl": acl}
                     for acl in acls for a in acl.get("Associations", [])
                     if a["SubnetId"] in subnets}
        return (by_subnet, mine[0] if mine else None)

    def _mode(self, ctx: StepContext) -> str:
        return str(ctx.options.get("mode") or "replace")

    def check(self, ctx: StepContext) -> bool:
        by_subnet, mine = self._observe(ctx)
        if not by_subnet:
            return False
        if self._mode(ctx) == "insert":
            return all(isolates(s["acl"]) for s in by_subnet.values())
        return mine is not None and isolates(mine) and all(
            s["nacl_id"] == mine["NetworkAclId"] for s in by_subnet.values())

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        by_subnet, _ = self._observe(ctx)
        captured: dict[str, Any] = {
            "mode": self._mode(ctx), "vpc_id": ctx.target.facts.get("vpc_id", ""),
            "subnets": {s: {"association_id": v["association_id"], "nacl_id": v["nacl_id"]}
                        for s, v in by_subnet.items()},
        }
        if captured["mode"] == "insert":
            plan: dict[str, list[dict[str, Any]]] = {}
            for v in by_subnet.values():
                acl = v["acl"]
                rules: list[dict[str, Any]] = []
                for egress in (False, True):
                    free = _lowest_free(acl.get("Entries", []), egress, len(DENY))
                    if not free:
                        raise StepFailed(
                            "NetworkAclFull",
                            f"{acl['NetworkAclId']} has no free rule number ahead of its "
                            f"{'egress' if egress else 'ingress'} rules (or holds "
                            f"{MAX_RULES}); nothing was changed — use the default mode, "
                            "which swaps in a dedicated ACL")
                    rules += [{"rule": n, "egress": egress, "v4": v4, "v6": v6}
                              for n, (_, v4, v6) in zip(free, DENY, strict=True)]
                plan[acl["NetworkAclId"]] = rules
            captured["inserted"] = plan
        return captured

    def _isolation_acl(self, ctx: StepContext, captured: dict[str, Any]) -> str:
        _, mine = self._observe(ctx)
        ec2 = ctx.clients.ec2
        if mine is None:
            acl = ec2.create_network_acl(VpcId=captured["vpc_id"], TagSpecifications=[
                {"ResourceType": "network-acl", "Tags": _tags(ctx.target.incident_id)}])
            mine = acl["NetworkAcl"]
        acl_id = str(mine["NetworkAclId"])
        if not isolates(mine):
            existing = {(e["RuleNumber"], e["Egress"]) for e in mine.get("Entries", [])}
            notes = parallel(lambda args: _create_entry(ec2, acl_id, args), [
                _entry_args(1 + offset, egress, v4, v6)
                for egress in (False, True) for offset, v4, v6 in DENY
                if (1 + offset, egress) not in existing])
            ctx.memo["notes"] = [n for n in notes if n]
        return acl_id

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ec2 = ctx.clients.ec2
        subnets = ", ".join(captured["subnets"]) or "none"
        note = ("NACLs are stateless: existing connections are cut too, for every instance "
                f"in {subnets}")
        if captured["mode"] == "insert":
            calls = [partial(_create_entry, ec2, acl_id,
                             _entry_args(r["rule"], r["egress"], r["v4"], r["v6"]))
                     for acl_id, rules in captured["inserted"].items() for r in rules]
            notes = [n for n in parallel(lambda call: call(), calls) if n]
            if notes:
                note += "; " + "; ".join(notes)
            where = "; ".join(f"{acl} rules {sorted({r['rule'] for r in rules})}"
                              for acl, rules in captured["inserted"].items())
            return Outcome(f"deny-all entries inserted first: {where}. {note}")
        acl_id = self._isolation_acl(ctx, captured)
        parallel(lambda item: ec2.replace_network_acl_association(
            AssociationId=item[1]["association_id"], NetworkAclId=acl_id),
            list(captured["subnets"].items()))
        moves = "; ".join(f"{s}: {v['nacl_id']} → {acl_id}"
                          for s, v in captured["subnets"].items())
        extra = "; ".join(ctx.memo.get("notes", []))
        return Outcome(f"{moves}. {note}" + (f"; {extra}" if extra else ""),
                       {"isolation_acl": acl_id})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        ctx.memo.clear()
        by_subnet, _ = self._observe(ctx)
        wrong = [s for s in captured["subnets"]
                 if s not in by_subnet or not isolates(by_subnet[s]["acl"])]
        if captured["mode"] == "replace":
            wrong += [s for s, v in by_subnet.items()
                      if v["nacl_id"] != outcome.details.get("isolation_acl")]
        if wrong:
            raise VerificationFailed(f"not denying all traffic: {', '.join(sorted(set(wrong)))}")
        return f"{len(by_subnet)} subnet(s) deny all traffic both ways"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        if captured.get("mode") == "insert":
            return "remove the inserted deny entries from " + ", ".join(captured["inserted"])
        return "; ".join(f"{s} back on {v['nacl_id']}" for s, v in captured["subnets"].items())

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ec2 = ctx.clients.ec2
        if captured["mode"] == "insert":
            calls = [partial(delete_entry, ec2, acl_id, r["rule"], r["egress"])
                     for acl_id, rules in captured["inserted"].items() for r in rules]
            parallel(lambda call: call(), calls)
            return Outcome(self.describe_undo(captured))
        ctx.memo.clear()
        by_subnet, _ = self._observe(ctx)  # associations get new ids when replaced
        parallel(lambda item: ec2.replace_network_acl_association(
            AssociationId=by_subnet[item[0]]["association_id"], NetworkAclId=item[1]["nacl_id"]),
            list(captured["subnets"].items()))
        return Outcome(self.describe_undo(captured))
