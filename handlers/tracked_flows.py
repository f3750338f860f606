"""Sever the flows no security group can: deny entries for the instance's own addresses on
the network ACLs of the subnets its always-tracked flows cross.

AWS tracks every flow through a NAT gateway, a Network or Gateway Load Balancer, a
PrivateLink (interface) endpoint or a transit gateway attachment whatever the security
groups say, and conntrack timeouts are *idle* timeouts: a reverse shell through the NAT
gateway never goes idle, so the open→sealed swap does not end it. A network ACL is
stateless ("a network ACL that blocks traffic in either direction breaks existing
connections"). It matches an inbound entry on the packet's *source* and an outbound entry
on its *destination*, and it never sees traffic that stays inside its own subnet. So the
instance is cut where its flows cross into another subnet: on the ACL of each subnet that
carries them (the NAT gateway's, the attachment's, the load balancer nodes', the
endpoints'), one deny-all entry inbound with the instance's address as source and one
outbound with it as destination, for each of its private IPv4 (/32) and IPv6 (/128)
addresses, numbered below every allow of that direction. Only this instance's addresses
are matched: nothing else in those subnets is affected.

What the tests cannot show: moto keeps the entries but evaluates nothing and tracks no
connection; the tests evaluate the stored ACLs as AWS does (lowest matching rule decides).
A NAT gateway in the instance's own subnet cannot be cut this way (the ACL never sees
that hop, and past the NAT the source is the NAT's address): that flow may live on, and
the step says so. Default quota: 20 entries a direction per ACL.

A fleet (many instances on one card) cannot have an entry per address: its addresses
are covered by the fewest CIDR blocks that hold no other instance's address (`cover`),
worked out at card time and shared by the members a block covers. The first member to
reach a block adds its entries, the others find them; a block is deleted at release
only once no other contained instance's address is inside it. A block may also hold
free addresses of the subnet: an instance launched into one while the fleet is
contained is cut at the NAT gateway too (the card says so)."""

from __future__ import annotations

import ipaddress
import threading
from typing import Any

from botocore.exceptions import ClientError

from handlers.aws import Clients
from handlers.base import (
    Action,
    Outcome,
    StepContext,
    StepFailed,
    StepHeld,
    VerificationFailed,
)
from handlers.fanout import parallel
from handlers.lease import fail_safe
from handlers.network_acl import MAX_RULES, delete_entry
from handlers.retry import Backoff, describe_error

DEFAULT_RULES = (32767, 32768)
ALREADY_TAKEN = "NetworkAclEntryAlreadyExists"
# The creates go out on the cut's client (no botocore retry): throttling and lost answers
# are retried here, briefly, beside the seal.
ENTRY_RETRY = Backoff(attempts=6, base=0.2, cap=2.0)

LOOK_PERMISSIONS = ("ec2:DescribeNatGateways", "ec2:DescribeTransitGatewayVpcAttachments",
                    "ec2:DescribeVpcEndpoints", "ec2:DescribeNetworkAcls",
                    "elasticloadbalancing:DescribeTargetGroups",
                    "elasticloadbalancing:DescribeLoadBalancers")


def addresses(facts: dict[str, Any]) -> list[str]:
    """Every private address of every ENI, as CIDRs: /32 and /128."""
    found: list[str] = []
    for eni in facts.get("enis") or []:
        for ip in [eni.get("private_ip"), *(eni.get("addresses") or [])]:
            if ip and f"{ip}/32" not in found:
                found.append(f"{ip}/32")
        for ip in eni.get("ipv6") or []:
            if f"{ip}/128" not in found:
                found.append(f"{ip}/128")
    return found


def carrying_subnets(clients: Clients, facts: dict[str, Any]) -> list[dict[str, str]]:
    """The subnets the instance's always-tracked flows cross, each with why:
    [{"subnet": …, "via": "NAT gateway nat-…"}]."""
    ec2, vpc_id = clients.ec2, facts.get("vpc_id", "")
    nats = [w["id"] for w in facts.get("subnet_exits") or [] if w["kind"] == "nat"]
    has_tgw = any(w["kind"] == "tgw" for w in facts.get("subnet_exits") or [])
    balancers = [r["arn"] for r in facts.get("target_groups") or []
                 if r.get("kind") in ("nlb", "gwlb")]

    def nat() -> list[dict[str, str]]:
        if not nats:
            return []
        found = ec2.describe_nat_gateways(NatGatewayIds=nats)["NatGateways"]
        return [{"subnet": n["SubnetId"], "via": f"NAT gateway {n['NatGatewayId']}"}
                for n in found]

    def tgw() -> list[dict[str, str]]:
        if not has_tgw:
            return []
        found = ec2.describe_transit_gateway_vpc_attachments(Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "state", "Values": ["available", "pending", "modifying"]}])
        return [{"subnet": s, "via": f"transit gateway attachment "
                                     f"{a['TransitGatewayAttachmentId']}"}
                for a in found.get("TransitGatewayVpcAttachments", [])
                for s in a.get("SubnetIds", [])]

    def endpoints() -> list[dict[str, str]]:
        found = ec2.describe_vpc_endpoints(Filters=[
            {"Name": "vpc-id", "Values": [vpc_id]},
            {"Name": "vpc-endpoint-type", "Values": ["Interface", "GatewayLoadBalancer"]}])
        return [{"subnet": s, "via": f"endpoint {e['VpcEndpointId']} "
                                     f"({e.get('ServiceName', '')})"}
                for e in found.get("VpcEndpoints", []) for s in e.get("SubnetIds", [])]

    def nodes() -> list[dict[str, str]]:
        if not balancers:
            return []
        elbv2 = clients.client("elbv2")
        groups = elbv2.describe_target_groups(TargetGroupArns=balancers)["TargetGroups"]
        lbs = sorted({a for g in groups for a in g.get("LoadBalancerArns", [])})
        if not lbs:
            return []
        found = elbv2.describe_load_balancers(LoadBalancerArns=lbs)["LoadBalancers"]
        return [{"subnet": z["SubnetId"], "via": f"load balancer {lb['LoadBalancerName']}"}
                for lb in found for z in lb.get("AvailabilityZones", []) if z.get("SubnetId")]

    out: list[dict[str, str]] = []
    for part in parallel(lambda f: f(), [nat, tgw, endpoints, nodes]):
        out += [p for p in part if p not in out]
    return out


def lowest_allow(acl: dict[str, Any], egress: bool) -> int:
    return min((e["RuleNumber"] for e in acl.get("Entries", [])
                if e["Egress"] == egress and e["RuleAction"] == "allow"), default=32766)


def free_numbers(acl: dict[str, Any], egress: bool, taken: set[int]) -> list[int]:
    """Rule numbers below every allow of this direction, highest first (closest to the
    rules they shadow, leaving the low numbers to people), not used or tried yet."""
    used = {e["RuleNumber"] for e in acl.get("Entries", []) if e["Egress"] == egress}
    return [n for n in range(lowest_allow(acl, egress) - 1, 0, -1)
            if n not in used and n not in taken]


def room(acl: dict[str, Any], egress: bool) -> int:
    """How many more entries this direction takes under the default quota."""
    used = sum(1 for e in acl.get("Entries", [])
               if e["Egress"] == egress and e["RuleNumber"] not in DEFAULT_RULES)
    return MAX_RULES - used


def decides(acl: dict[str, Any], egress: bool, cidr: str) -> str:
    """What the ACL does to all traffic of `cidr` (the source inbound, the destination
    outbound), evaluated as AWS does: entries in rule-number order, the first whose range
    holds the address decides. "deny" when a deny of every protocol comes first."""
    net = ipaddress.ip_network(cidr)
    key = "CidrBlock" if net.version == 4 else "Ipv6CidrBlock"
    for entry in sorted((e for e in acl.get("Entries", [])
                         if e["Egress"] == egress and e.get(key)),
                        key=lambda e: e["RuleNumber"]):
        if net.subnet_of(ipaddress.ip_network(entry[key])):  # type: ignore[arg-type]
            if entry["RuleAction"] == "allow":
                return "allow"
            if str(entry.get("Protocol")) == "-1":
                return "deny"
    return "deny"


def _family(cidr: str) -> dict[str, str]:
    return {"Ipv6CidrBlock": cidr} if ":" in cidr else {"CidrBlock": cidr}


def cover(wanted: list[str], others: list[str]) -> list[str]:
    """The fewest CIDR blocks (aligned prefixes) that hold every IPv4 address of `wanted`
    and none of `others` (addresses, or /32 CIDRs); IPv6 addresses stay one entry each."""
    def v4(items: list[str]) -> set[ipaddress.IPv4Network]:
        nets = {ipaddress.ip_network(a if "/" in a else f"{a}/32") for a in items}
        return {n for n in nets if isinstance(n, ipaddress.IPv4Network)}

    want = v4(wanted)
    avoid = v4(others) - want
    six = sorted(a for a in wanted if ":" in a)
    if not want:
        return six
    blocks: list[str] = []

    def walk(net: ipaddress.IPv4Network, inside: list[ipaddress.IPv4Network],
             outside: list[ipaddress.IPv4Network]) -> None:
        if not inside:
            return
        if not outside:
            blocks.append(str(net))
            return
        for half in net.subnets():
            walk(half, [a for a in inside if a.subnet_of(half)],
                 [o for o in outside if o.subnet_of(half)])

    # From the smallest block that holds them all.
    net = min(want)
    while not all(w.subnet_of(net) for w in want):
        net = net.supernet()
    walk(net, sorted(want), [o for o in avoid if o.subnet_of(net)])
    return sorted(blocks, key=ipaddress.ip_network) + six


# A fleet's blocks this process has added: (fleet, ACL, egress, CIDR).
_ADDED: set[tuple[str, str, bool, str]] = set()
_BLOCK_LOCKS: dict[tuple[str, bool | None, str], threading.Lock] = {}
_BLOCK_LOCKS_LOCK = threading.Lock()


def _block_lock(acl_id: str, egress: bool | None, cidr: str) -> threading.Lock:
    with _BLOCK_LOCKS_LOCK:
        return _BLOCK_LOCKS.setdefault((acl_id, egress, cidr), threading.Lock())


def block_of(address: str, blocks: list[str]) -> str | None:
    """The block of `blocks` that holds `address`."""
    ip = ipaddress.ip_network(address if "/" in address else f"{address}/32")
    for b in blocks:
        net = ipaddress.ip_network(b)
        if ip.version == net.version and ip.subnet_of(net):  # type: ignore[arg-type]
            return b
    return None


def _cidr(entry: dict[str, Any]) -> str:
    return str(entry.get("CidrBlock") or entry.get("Ipv6CidrBlock") or "")


def ours(acl: dict[str, Any], captured: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries Cordon added to this ACL for this instance: a deny of every protocol
    for one of its addresses, under a number the ACL did not use when the plan was made.
    Found by looking, so that an entry whose answer was lost, or whose record a crash
    cut short, is still the release's to delete (and never made twice)."""
    acl_id = acl["NetworkAclId"]
    before = {(e["Egress"], e["RuleNumber"])
              for e in (captured["acls"].get(acl_id) or {}).get("Entries", [])}
    return [{"acl": acl_id, "rule": e["RuleNumber"], "egress": e["Egress"], "cidr": _cidr(e)}
            for e in acl.get("Entries", [])
            if (e["Egress"], e["RuleNumber"]) not in before and e["RuleAction"] == "deny"
            and str(e.get("Protocol")) == "-1" and _cidr(e) in captured["addresses"]]


class _Numbers:
    """Rule numbers handed out per ACL and direction: a refused number (another incident
    took it meanwhile) is replaced by the next free one."""

    def __init__(self, acls: dict[str, dict[str, Any]]) -> None:
        self.acls = acls
        self.taken: dict[tuple[str, bool], set[int]] = {}
        self.lock = threading.Lock()

    def next(self, acl_id: str, egress: bool) -> int:
        with self.lock:
            taken = self.taken.setdefault((acl_id, egress), set())
            free = free_numbers(self.acls[acl_id], egress, taken)
            if not free:
                raise StepFailed("NetworkAclRuleNumbers", f"{acl_id} has no free rule number "
                                 "below its first allow")
            taken.add(free[0])
            return free[0]


class SeverTrackedFlows(Action):
    name = "sever-tracked-flows"
    description = ("deny entries for the instance's own addresses on the network ACLs of the "
                   "subnets its always-tracked flows cross (NAT gateway, transit gateway, "
                   "NLB/GWLB, endpoints): ends what security groups cannot; only this "
                   "instance is affected")
    permissions = (*LOOK_PERMISSIONS, "ec2:CreateNetworkAclEntry", "ec2:DeleteNetworkAclEntry",
                   "ec2:DescribeNetworkInterfaces")
    # A failure part-way may leave entries: a release deletes those it recorded.
    partial_undo = True

    def _plan(self, ctx: StepContext) -> dict[str, Any]:
        facts = ctx.target.facts
        own = {e.get("subnet_id") for e in facts.get("enis") or []} | {facts.get("subnet_id")}
        carrying = facts.get("tracked_paths")
        if carrying is None or ctx.memo.get("fresh"):
            carrying = carrying_subnets(ctx.clients, facts)
        cuttable = [c for c in carrying if c["subnet"] not in own]
        uncut = [c["via"] for c in carrying if c["subnet"] in own]
        acls: dict[str, dict[str, Any]] = {}
        why: dict[str, list[str]] = {}
        if cuttable:
            found = ctx.clients.ec2.describe_network_acls(Filters=[
                {"Name": "association.subnet-id",
                 "Values": sorted({c["subnet"] for c in cuttable})}])["NetworkAcls"]
            for acl in found:
                subnets = {a["SubnetId"] for a in acl.get("Associations", [])}
                vias = [f"{c['via']} in {c['subnet']}" for c in cuttable
                        if c["subnet"] in subnets]
                if vias:
                    acls[acl["NetworkAclId"]] = {"NetworkAclId": acl["NetworkAclId"],
                                                 "Entries": acl.get("Entries", [])}
                    why[acl["NetworkAclId"]] = vias
        mine = addresses(facts)
        blocks = list(facts.get("sever_blocks") or [])
        return {"addresses": blocks or mine, "own": mine, "shared": bool(blocks), "acls": acls,
                "why": why, "uncut": uncut, "entries": []}

    def observe_early(self, ctx: StepContext) -> dict[str, Any] | None:
        """At card time: which ACLs, their entries (for the rule numbers) and the
        instance's addresses; after the click the entries go out with the open move."""
        return self._plan(ctx)

    def check(self, ctx: StepContext) -> bool:
        return False

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        ctx.memo["fresh"] = True  # after the click (a resume or a retry): look again
        return self._plan(ctx)

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        acls, cidrs = captured["acls"], captured["addresses"]
        if not acls and not captured["uncut"]:
            return Outcome("no NAT gateway, transit gateway, NLB/GWLB or interface endpoint "
                           "carries its flows: nothing to add", {"entries": []})
        full = [f"{acl_id} ({'outbound' if egress else 'inbound'}: room for "
                f"{room(acl, egress)}, {len(cidrs)} needed)"
                for acl_id, acl in acls.items() for egress in (False, True)
                if room(acl, egress) < len(cidrs)]
        if full:
            raise StepFailed("NetworkAclEntryLimitExceeded", "no room for the deny entries on "
                             + "; ".join(full) + ". Flows through "
                             + "; ".join(v for a in acls for v in captured["why"][a])
                             + " may live on: free entries on those ACLs and retry")
        numbers = _Numbers(acls)
        created: list[dict[str, Any]] = []
        if captured.get("sent"):
            # A resumed or retried run: what an earlier attempt added stands.
            created = self._present(ctx, captured)
        else:
            captured["sent"] = True
            ctx.save(captured)  # from here on, a release looks for what was added
        done = {(e["acl"], e["egress"], e["cidr"]) for e in created}
        wanted = [(acl_id, egress, cidr) for acl_id in acls for cidr in cidrs
                  for egress in (False, True) if (acl_id, egress, cidr) not in done]
        lock = threading.Lock()

        covered: list[dict[str, Any]] = []

        def one(item: tuple[str, bool, str]) -> None:
            acl_id, egress, cidr = item
            if captured.get("shared"):
                # A fleet's block: the first member to reach it adds the entry; the others
                # of this process know it without a describe on the path to the cut.
                added = (ctx.target.facts.get("fleet_id") or "", acl_id, egress, cidr)
                with _block_lock(acl_id, egress, cidr):
                    if added in _ADDED or self._denied(ctx, acl_id, egress, cidr):
                        with lock:
                            covered.append({"acl": acl_id, "egress": egress, "cidr": cidr})
                        return
                    create(acl_id, egress, cidr)
                    _ADDED.add(added)
                return
            create(acl_id, egress, cidr)

        def create(acl_id: str, egress: bool, cidr: str) -> None:
            while True:
                rule = numbers.next(acl_id, egress)
                try:
                    ENTRY_RETRY.call(lambda: ctx.clients.ec2_cut.create_network_acl_entry(
                        NetworkAclId=acl_id, RuleNumber=rule,  # noqa: B023
                        Protocol="-1", RuleAction="deny", Egress=egress, **_family(cidr)))
                except ClientError as exc:
                    if describe_error(exc).code != ALREADY_TAKEN:
                        raise
                    if not self._landed(ctx, captured, acl_id, rule, egress, cidr):
                        continue  # another incident took this number meanwhile
                    # else: an earlier attempt's answer was lost; it is ours
                with lock:
                    created.append({"acl": acl_id, "rule": rule, "egress": egress,
                                    "cidr": cidr})
                return

        failure: Exception | None = None
        try:
            parallel(one, wanted)  # raises once every create has answered
        except Exception as exc:
            failure = exc
        captured["entries"] = created
        captured["covered"] = covered
        ctx.save(captured)  # for the record; a release deletes what it finds (`ours`)
        if failure is not None:
            err = describe_error(failure)
            raise StepFailed(err.code, f"not every deny entry was added: {err.message}",
                             _said(created))
        held = ctx.gate(None)
        if held and captured.get("shared"):
            # A fleet's blocks cover other members too: they stay (this instance's NAT
            # traffic stays denied, the safe side) until the release.
            raise StepHeld(f"{held} failed: not cut", "the fleet's deny entries stay (they "
                           "cover other members); the release removes them")
        if held:
            # The cut is held (the detach failed): these entries go too, as the groups do.
            with fail_safe():
                self._delete(ctx, captured)
            captured["entries"] = []
            ctx.save(captured)
            raise StepHeld(f"{held} failed: not cut", "the deny entries were removed again")
        summary = _said(created) + ("; " + "; ".join(
            f"via {a}" for acl in acls for a in captured["why"][acl]) if acls else "")
        if covered:
            summary += (f"; {len(covered)} entr{'y' if len(covered) == 1 else 'ies'} another "
                        "member of its fleet had added already")
        if captured["uncut"]:
            raise StepFailed("NotSeverable", "in the instance's own subnet, where no network "
                             "ACL sees them: flows through " + ", ".join(captured["uncut"])
                             + " may live on until idle", summary)
        if captured.get("shared"):
            return Outcome(summary + "; its fleet's blocks hold no other instance's address",
                           {"entries": created, "covered": covered})
        return Outcome(summary + "; only this instance's addresses are matched",
                       {"entries": created})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        entries = [*(outcome.details.get("entries") or []),
                   *(outcome.details.get("covered") or [])]
        ids = sorted({e["acl"] for e in entries})
        if not ids:
            return "nothing to verify"
        found = ctx.clients.ec2.describe_network_acls(NetworkAclIds=ids)["NetworkAcls"]
        open_ = [f"{acl['NetworkAclId']} {'out' if egress else 'in'} {cidr}"
                 for acl in found for cidr in captured["addresses"]
                 for egress in (False, True) if decides(acl, egress, cidr) != "deny"]
        if open_ or len(found) != len(ids):
            raise VerificationFailed("traffic of the instance still allowed: "
                                     + ", ".join(open_ or ["an ACL is gone"]))
        return f"{len(ids)} ACL(s) deny all of its traffic both ways"

    def _present(self, ctx: StepContext, captured: dict[str, Any]) -> list[dict[str, Any]]:
        """What Cordon added for this instance on the planned ACLs, described now."""
        ids = sorted(captured["acls"])
        if not ids:
            return []
        found = ctx.clients.ec2.describe_network_acls(NetworkAclIds=ids)["NetworkAcls"]
        return [e for acl in found for e in ours(acl, captured)]

    def _landed(self, ctx: StepContext, captured: dict[str, Any], acl_id: str, rule: int,
                egress: bool, cidr: str) -> bool:
        """Whether the entry that refused this number is the one this step sent."""
        return {"acl": acl_id, "rule": rule, "egress": egress, "cidr": cidr} in [
            e for e in self._present(ctx, captured) if e["acl"] == acl_id]

    def _denied(self, ctx: StepContext, acl_id: str, egress: bool, cidr: str) -> bool:
        """Whether the ACL already has a deny of everything for exactly `cidr` this way,
        below every allow (so that it decides)."""
        (acl,) = ctx.clients.ec2.describe_network_acls(NetworkAclIds=[acl_id])["NetworkAcls"]
        return any(e["Egress"] == egress and e["RuleAction"] == "deny"
                   and str(e.get("Protocol")) == "-1" and _cidr(e) == cidr
                   and e["RuleNumber"] < lowest_allow(acl, egress)
                   for e in acl.get("Entries", []))

    def _release_blocks(self, ctx: StepContext, captured: dict[str, Any]) -> str:
        """A fleet's blocks: each is deleted once no other contained instance's address
        (on cordon-sealed, not released along with this one) is inside it."""
        facts = ctx.target.facts
        along = {*captured.get("own", []), *(facts.get("released_with") or [])}
        enis = ctx.clients.ec2.describe_network_interfaces(Filters=[
            {"Name": "vpc-id", "Values": [facts.get("vpc_id", "")]}])["NetworkInterfaces"]
        sealed = [e for e in enis
                  if any(g.get("GroupName") == "cordon-sealed" for g in e.get("Groups", []))]
        still = [f"{a['PrivateIpAddress']}/32" for eni in sealed
                 for a in eni.get("PrivateIpAddresses", [])
                 if a.get("PrivateIpAddress") and f"{a['PrivateIpAddress']}/32" not in along]
        kept = [b for b in captured["addresses"] if any(block_of(a, [b]) for a in still)]
        gone = [b for b in captured["addresses"] if b not in kept]
        deleted = 0
        fleet = facts.get("fleet_id") or ""
        for acl_id in sorted(captured["acls"]):
            # What the ACL held when the card was made is not Cordon's to delete.
            before = {(e["Egress"], e["RuleNumber"])
                      for e in captured["acls"][acl_id].get("Entries", [])}
            for block in gone:
                # Members released together reach a block at once: one deletes it.
                with _block_lock(acl_id, None, block):
                    (acl,) = ctx.clients.ec2.describe_network_acls(
                        NetworkAclIds=[acl_id])["NetworkAcls"]
                    entries = [e for e in acl.get("Entries", [])
                               if e["RuleAction"] == "deny" and str(e.get("Protocol")) == "-1"
                               and _cidr(e) == block
                               and (e["Egress"], e["RuleNumber"]) not in before]
                    for e in entries:
                        delete_entry(ctx.clients.ec2, acl_id, e["RuleNumber"], e["Egress"])
                        _ADDED.discard((fleet, acl_id, e["Egress"], block))
                    deleted += len(entries)
        said = f"{deleted} deny entries of its fleet's blocks deleted"
        if kept:
            said += (f"; kept {', '.join(kept)}: still covering "
                     f"{len([a for a in still if any(block_of(a, [b]) for b in kept)])} "
                     "contained instances' addresses")
        return said

    def _delete(self, ctx: StepContext, captured: dict[str, Any]) -> int:
        """Delete the entries Cordon added for this instance (`ours`): those recorded, and
        any whose answer or record was lost."""
        entries = self._present(ctx, captured)
        parallel(lambda e: delete_entry(ctx.clients.ec2, e["acl"], e["rule"], e["egress"]),
                 entries)
        return len(entries)

    def describe_undo(self, captured: dict[str, Any]) -> str:
        if not captured.get("sent"):
            return "nothing (no entry added)"
        n = len(captured.get("entries") or [])
        return f"delete the {n} deny entries it added" if n else \
            "delete the deny entries it added"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        if not captured.get("sent"):
            return Outcome("no deny entry was added")
        if captured.get("shared"):
            return Outcome(self._release_blocks(ctx, captured))
        return Outcome(f"{self._delete(ctx, captured)} deny entries deleted")


def _said(created: list[dict[str, Any]]) -> str:
    by_acl: dict[str, list[str]] = {}
    for e in sorted(created, key=lambda e: (e["acl"], e["egress"], e["rule"])):
        by_acl.setdefault(e["acl"], []).append(
            f"{'out to' if e['egress'] else 'in from'} {e['cidr']} #{e['rule']}")
    return "deny " + "; ".join(f"{acl}: {', '.join(v)}" for acl, v in by_acl.items())
