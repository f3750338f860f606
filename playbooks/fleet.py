"""One request for many instances: `/contain asg=NAME`, `/contain tag:KEY=VALUE` or several
ids make one card; each instance found becomes an incident of its own (a member) that
the card's approval starts. Every configured account and region is searched unless
`region=`/`account=` narrow it."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from handlers import fleet_lookup
from handlers.attribution import acting_as
from handlers.fanout import parallel
from handlers.retry import describe_error
from playbooks.catalogue import FLEET_PLAYBOOKS, FLEET_TWO_APPROVERS
from playbooks.errors import AwsLookupFailed, BadInput, CordonError, TargetNotFound
from playbooks.models import Incident
from playbooks.requests import ContainRequest

if TYPE_CHECKING:
    from collections.abc import Callable

    from handlers.aws import Clients
    from playbooks.store import Store


class FleetHost(Protocol):
    """What a fleet request needs of the service (playbooks.service.Cordon)."""

    store: Store
    approval_ttl_seconds: int
    wide_approvals: int
    clients_for: Callable[..., Clients]

    def places(self, region: str | None, account: str | None
               ) -> tuple[list[str], list[str | None]]: ...

    def lookup_instance(self, instance_id: str, region: str | None = None,
                        account: str | None = None) -> dict[str, Any]: ...

    def open_request(self, req: ContainRequest, facts: dict[str, Any],
                     fleet_id: str | None = None) -> Incident: ...

    def release_request(self, parent: Incident, reason: str, requester: str,
                        channel_id: str, fleet_id: str | None = None,
                        extra_facts: dict[str, Any] | None = None) -> Incident: ...

log = logging.getLogger("cordon.fleet")

TARGET_MAX = 64  # the incidents table's target column


@dataclass
class FleetAsk:
    """What was asked: ids, or an Auto Scaling group, or a tag; and where."""

    instance_ids: list[str] = field(default_factory=list)
    asg: str | None = None
    tag: tuple[str, str] | None = None
    region: str | None = None
    account: str | None = None

    @property
    def label(self) -> str:
        if self.asg is not None:
            return f"asg={self.asg}"
        if self.tag is not None:
            return f"tag:{self.tag[0]}={self.tag[1]}"
        return f"{len(self.instance_ids)} instances"


def find_members(cordon: FleetHost, ask: FleetAsk) -> list[tuple[str, str | None, str | None]]:
    """(instance, region, account) of each instance asked for; ids are looked up where
    they are (every place), groups and tags in every place at once."""
    if ask.instance_ids:
        return [(i, ask.region, ask.account) for i in ask.instance_ids]
    regions, accounts = cordon.places(ask.region, ask.account)
    places = [(a, r) for a in accounts for r in regions]

    def look(place: tuple[str | None, str]) -> tuple[list[str] | None, str | None]:
        clients = cordon.clients_for(place[1], place[0])
        try:
            if ask.asg is not None:
                return fleet_lookup.group_members(clients, ask.asg), None
            assert ask.tag is not None
            return fleet_lookup.tagged(clients, *ask.tag), None
        except Exception as exc:
            return None, describe_error(exc).code

    with acting_as("lookup-fleet"):
        results = parallel(look, places)
    found: list[tuple[str, str | None, str | None]] = [
        (i, r, a) for (a, r), (ids, _) in zip(places, results, strict=True) for i in (ids or [])]
    errors = [f"{a + '/' if a else ''}{r}: {err}"
              for (a, r), (_, err) in zip(places, results, strict=True) if err]
    where = ", ".join(f"{a}/{r}" if a else r for a, r in places)
    if not found:
        if errors:
            raise AwsLookupFailed(f"could not look for {ask.label}: {'; '.join(errors)}")
        what = "no Auto Scaling group" if ask.asg is not None else "no live instance with"
        raise TargetNotFound(f"{what} {ask.label} in {where}")
    return found


def open_fleet_request(cordon: FleetHost, ask: FleetAsk, playbook: str, reason: str,
                       requester: str, channel_id: str) -> Incident:
    """The fleet's incident and one member incident per instance found, all pending on
    one card. An instance that cannot be looked up, or already has an open request, is
    left out and named on the card; none at all: nothing is made."""
    if playbook not in FLEET_PLAYBOOKS:
        raise BadInput("a fleet takes the per-instance playbooks ("
                       + ", ".join(f"`{p}`" for p in FLEET_PLAYBOOKS) + ")")
    asked = find_members(cordon, ask)

    def facts_of(member: tuple[str, str | None, str | None]
                 ) -> tuple[dict[str, Any] | None, str]:
        instance_id, region, account = member
        existing = cordon.store.open_for_target(instance_id)
        if existing is not None:
            return None, f"already has an open request, {existing.id}"
        try:
            return cordon.lookup_instance(instance_id, region, account), ""
        except CordonError as exc:
            return None, str(exc)

    looked = parallel(facts_of, asked)
    ready = [(m[0], f) for m, (f, _) in zip(asked, looked, strict=True) if f is not None]
    left_out = [{"instance": m[0], "why": why}
                for m, (f, why) in zip(asked, looked, strict=True) if f is None]
    if not ready:
        raise BadInput(f"none of the {len(asked)} instances of {ask.label} can be contained: "
                       + "; ".join(f"{x['instance']}: {x['why']}" for x in left_out[:5]))
    sever = _shared_blocks(cordon, playbook, ready)
    members = [{"instance": i, "name": f.get("name") or "", "region": f["region"],
                "account": f.get("account", ""), "enis": len(f.get("enis") or []),
                "asg": f.get("asg") or ""} for i, f in ready]
    regions = sorted({m["region"] for m in members})
    fleet = cordon.store.create_incident(
        ttl_seconds=cordon.approval_ttl_seconds,
        approvals_required=cordon.wide_approvals if len(ready) >= FLEET_TWO_APPROVERS else 1,
        kind="fleet", target_id=ask.label[:TARGET_MAX], region=regions[0],
        account=members[0]["account"], playbook=playbook, reason=reason,
        requester=requester, channel_id=channel_id,
        facts={"fleet": {"label": ask.label, "members": members, "left_out": left_out,
                         "regions": regions, "sever": sever}})

    def open_member(item: tuple[str, dict[str, Any]]) -> Incident:
        instance_id, facts = item
        return cordon.open_request(ContainRequest(
            instance_id=instance_id, playbook=playbook, reason=reason, requester=requester,
            channel_id=channel_id), {**facts, "fleet_id": fleet.id}, fleet_id=fleet.id)

    parallel(open_member, ready)
    log.info("fleet request opened", extra={"incident": fleet.id, "target": ask.label,
                                            "members": len(ready), "left_out": len(left_out)})
    return fleet


def _shared_blocks(cordon: FleetHost, playbook: str, ready: list[tuple[str, dict[str, Any]]]
                   ) -> dict[str, Any]:
    """Members whose flows cross a NAT gateway (or another always-tracked hop) are cut on
    that subnet's ACL; one entry per address cannot cover a fleet (20 a direction by
    default), so their addresses are covered by the fewest blocks that hold no other
    address of their VPC. Each member's facts get the blocks that cover it; the fleet's,
    what the card says."""
    from handlers.tracked_flows import addresses, block_of, cover
    from playbooks.catalogue import PLAYBOOKS

    steps = {s.action for s in PLAYBOOKS[playbook].steps}
    tracked = [(i, f) for i, f in ready if f.get("tracked_paths")]
    if "sever-tracked-flows" not in steps or len(tracked) < 2:
        return {}
    mine = {a for _, f in ready for a in addresses(f)}
    vpcs = sorted({(f.get("account_name"), f["region"], f.get("vpc_id", "")) for _, f in tracked})
    summary = {"addresses": 0, "blocks": 0, "spare": 0}
    with acting_as("lookup-fleet"):
        for account, region, vpc in vpcs:
            others = [a for a in fleet_lookup.vpc_addresses(
                cordon.clients_for(region, account), vpc) if f"{a}/32" not in mine]
            here = [(i, f) for i, f in tracked if (f.get("account_name"), f["region"],
                                                    f.get("vpc_id", "")) == (account, region,
                                                                             vpc)]
            wanted = [a for _, f in here for a in addresses(f)]
            blocks = cover(wanted, others)
            for _, f in here:
                f["sever_blocks"] = sorted({b for a in addresses(f)
                                            if (b := block_of(a, blocks)) is not None})
            summary["addresses"] += len(wanted)
            summary["blocks"] += len(blocks)
            summary["spare"] += sum(ipaddress.ip_network(b).num_addresses
                                    for b in blocks) - len(wanted)
    return summary


def open_fleet_release(cordon: FleetHost, fleet: Incident, reason: str, requester: str,
                       channel_id: str) -> Incident:
    """The release of a whole fleet: one card; each member that changed something gets a
    release of its own (its undo plan from its own recorded prior state), started by the
    card's approval. A member released already, or with its own release pending, is left
    out and named."""
    from playbooks.catalogue import RELEASE
    from playbooks.status import RELEASABLE

    members = cordon.store.members(fleet.id)
    releasable, left_out = [], []
    for m in members:
        pending = cordon.store.open_release_for(m.id)
        if m.status not in RELEASABLE:
            left_out.append({"instance": m.target_id, "why": f"{m.id} is {m.status}"})
        elif pending is not None:
            left_out.append({"instance": m.target_id,
                             "why": f"its own release {pending.id} is {pending.status}"})
        else:
            releasable.append(m)
    if not releasable:
        raise BadInput(f"no instance of {fleet.id} has anything to release")
    listed = {m["instance"]: m for m in ((fleet.facts or {}).get("fleet") or {}).get(
        "members", [])}
    release = cordon.store.create_incident(
        ttl_seconds=cordon.approval_ttl_seconds,
        approvals_required=(cordon.wide_approvals if len(releasable) >= FLEET_TWO_APPROVERS
                            else 1),
        kind="fleet", parent_id=fleet.id, target_id=fleet.target_id, region=fleet.region,
        account=fleet.account, playbook=RELEASE, reason=reason, requester=requester,
        channel_id=channel_id,
        facts={"release_of": fleet.id, "release_of_status": fleet.status,
               "fleet": {"label": (fleet.facts or {}).get("fleet", {}).get("label",
                                                                            fleet.target_id),
                         "members": [listed.get(m.target_id, {"instance": m.target_id})
                                     for m in releasable],
                         "left_out": left_out,
                         "regions": sorted({m.region for m in releasable})}})
    # Released together: a block shared by these members goes with the last of them,
    # whichever finishes last (a member's release keeps a block only for instances that
    # stay contained).
    from handlers.tracked_flows import addresses

    along = sorted({a for m in releasable for a in addresses(m.facts or {})})
    for m in releasable:
        cordon.release_request(m, reason, requester, channel_id, fleet_id=release.id,
                               extra_facts={"released_with": along})
    log.info("fleet release requested", extra={"incident": release.id, "parent": fleet.id,
                                               "members": len(releasable)})
    return release
