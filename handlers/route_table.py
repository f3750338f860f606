"""Subnet isolation with a route table that holds only the VPC-local route, and VPC
isolation by removing every route to the internet gateway."""

from __future__ import annotations

from functools import partial
from typing import Any

from handlers.base import Action, Outcome, StepContext, VerificationFailed
from handlers.fanout import both, parallel
from handlers.subnets import (
    internet_routes,
    other_exits,
    route_destination,
    route_tables,
    subnets_of,
)

ROLE = "isolation-route-table"


def _local_only(table: dict[str, Any]) -> bool:
    return all(r.get("GatewayId") == "local" for r in table.get("Routes", []))


class IsolateSubnetRoutes(Action):
    name = "isolate-subnet-routes"
    description = ("give the instance's subnet(s) a route table with only the VPC-local "
                   "route: nothing leaves the VPC; the instance still reaches its VPC")
    permissions = ("ec2:DescribeRouteTables", "ec2:CreateRouteTable", "ec2:CreateTags",
                   "ec2:ReplaceRouteTableAssociation", "ec2:AssociateRouteTable",
                   "ec2:DisassociateRouteTable")

    def _observe(self, ctx: StepContext) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return ctx.remember("observed", lambda: self._look(ctx))

    def _look(self, ctx: StepContext) -> tuple[dict[str, Any], dict[str, Any] | None]:
        ec2 = ctx.clients.ec2
        vpc_id = ctx.target.facts.get("vpc_id", "")
        subnets = subnets_of(ctx.target.facts)
        tables, mine = both(
            lambda: ec2.describe_route_tables(Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]}])["RouteTables"],
            lambda: ec2.describe_route_tables(Filters=[
                {"Name": "vpc-id", "Values": [vpc_id]},
                {"Name": "tag:cordon:role", "Values": [ROLE]}])["RouteTables"],
        )
        main = next((t["RouteTableId"] for t in tables for a in t.get("Associations", [])
                     if a.get("Main")), None)
        by_subnet: dict[str, Any] = {s: {"association_id": None, "route_table_id": main,
                                         "explicit": False} for s in subnets}
        for t in tables:
            for a in t.get("Associations", []):
                if a.get("SubnetId") in by_subnet:
                    by_subnet[a["SubnetId"]] = {"association_id": a["RouteTableAssociationId"],
                                                "route_table_id": t["RouteTableId"],
                                                "explicit": True}
        return (by_subnet, mine[0] if mine else None)

    def check(self, ctx: StepContext) -> bool:
        by_subnet, mine = self._observe(ctx)
        return mine is not None and _local_only(mine) and bool(by_subnet) and all(
            v["route_table_id"] == mine["RouteTableId"] for v in by_subnet.values())

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        by_subnet, _ = self._observe(ctx)
        return {"vpc_id": ctx.target.facts.get("vpc_id", ""), "subnets": by_subnet}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        _, mine = self._observe(ctx)
        ec2 = ctx.clients.ec2
        if mine is None:
            mine = ec2.create_route_table(VpcId=captured["vpc_id"], TagSpecifications=[
                {"ResourceType": "route-table", "Tags": [
                    {"Key": "cordon:managed", "Value": "true"},
                    {"Key": "cordon:role", "Value": ROLE},
                    {"Key": "Name", "Value": "cordon-isolation"},
                    {"Key": "cordon:created-for", "Value": ctx.target.incident_id}]}])["RouteTable"]
        table_id = str(mine["RouteTableId"])
        if not _local_only(mine):
            # Someone added a route to Cordon's table: take it out again.
            parallel(lambda r: ec2.delete_route(RouteTableId=table_id, **route_destination(r)),
                     [r for r in mine.get("Routes", []) if r.get("GatewayId") != "local"])
        calls = []
        for subnet, v in captured["subnets"].items():
            if v["explicit"]:
                calls.append(partial(ec2.replace_route_table_association,
                                     AssociationId=v["association_id"], RouteTableId=table_id))
            else:
                calls.append(partial(ec2.associate_route_table, SubnetId=subnet,
                                     RouteTableId=table_id))
        parallel(lambda call: call(), calls)
        moves = "; ".join(f"{s}: {v['route_table_id']}"
                          f"{'' if v['explicit'] else ' (main)'} → {table_id}"
                          for s, v in captured["subnets"].items())
        return Outcome(f"{moves}. Nothing leaves the VPC now; the instance can still reach "
                       "its own subnet and the rest of the VPC (the local route)",
                       {"isolation_table": table_id})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        ctx.memo.clear()
        by_subnet, mine = self._observe(ctx)
        table = outcome.details["isolation_table"]
        wrong = [s for s, v in by_subnet.items() if v["route_table_id"] != table]
        if mine is None or not _local_only(mine) or wrong:
            raise VerificationFailed(f"not isolated: {', '.join(wrong) or table + ' has routes'}")
        return f"{len(by_subnet)} subnet(s) on {table}, local route only"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return "; ".join(f"{s} back on {v['route_table_id']}"
                         f"{'' if v['explicit'] else ' (main, implicitly)'}"
                         for s, v in captured["subnets"].items())

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ec2 = ctx.clients.ec2
        ctx.memo.clear()
        now, _ = self._observe(ctx)
        calls = []
        for subnet, before in captured["subnets"].items():
            current = now.get(subnet, {})
            if not current.get("explicit"):
                continue
            if before["explicit"]:
                calls.append(partial(ec2.replace_route_table_association,
                                     AssociationId=current["association_id"],
                                     RouteTableId=before["route_table_id"]))
            else:
                calls.append(partial(ec2.disassociate_route_table,
                                     AssociationId=current["association_id"]))
        parallel(lambda call: call(), calls)
        return Outcome(self.describe_undo(captured))


class RemoveInternetRoutes(Action):
    name = "remove-internet-routes"
    description = ("remove every route to the VPC's internet gateway and egress-only internet "
                   "gateway from every route table (the gateways stay attached); hits every "
                   "instance in the VPC")
    permissions = ("ec2:DescribeRouteTables", "ec2:DeleteRoute", "ec2:CreateRoute")

    def _routes(self, ctx: StepContext) -> list[dict[str, Any]]:
        tables = route_tables(ctx.clients, ctx.target.facts.get("vpc_id", ""))
        ctx.memo["exits"] = other_exits(ctx.clients, "", tables)
        return internet_routes(ctx.clients, "", tables)

    def check(self, ctx: StepContext) -> bool:
        ctx.memo["routes"] = self._routes(ctx)
        return not ctx.memo["routes"]

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        return {"routes": ctx.memo.get("routes") or self._routes(ctx)}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ec2 = ctx.clients.ec2
        parallel(lambda r: ec2.delete_route(RouteTableId=r["route_table_id"],
                                            **r["destination"]), captured["routes"])
        removed = "; ".join(f"{r['route_table_id']} {next(iter(r['destination'].values()))}"
                            f" → {r['gateway_id']}" for r in captured["routes"])
        said = (f"removed: {removed or 'no route to an internet gateway'}. The gateway "
                "stays attached (AWS refuses to detach it while anything depends on it); "
                "every instance in the VPC has lost its internet routes")
        exits = ctx.memo.get("exits") or []
        if exits:
            said += (". ⚠️ NOT contained through these default routes, which stay: "
                     + "; ".join(exits))
        return Outcome(said, {"still_open": exits})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        left = self._routes(ctx)
        if left:
            raise VerificationFailed(f"{len(left)} route(s) to an internet gateway remain")
        return "no route table in the VPC targets an internet or egress-only gateway"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return f"re-create {len(captured.get('routes', []))} route(s) to the internet gateway"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        ec2 = ctx.clients.ec2
        parallel(lambda r: ec2.create_route(
            RouteTableId=r["route_table_id"], **r["destination"],
            **{r.get("target_key", "GatewayId"): r["gateway_id"]}), captured["routes"])
        return Outcome(self.describe_undo(captured).replace("re-create", "re-created"))
