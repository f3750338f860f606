"""The flows the Slack side calls: look up, request, decide, expire, report."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from handlers import access_keys, ec2_lookup, iam_roles, iam_users, s3_buckets
from handlers.attribution import acting_as
from handlers.aws import Clients, account_id_of
from handlers.base import StepContext, Target
from handlers.fanout import parallel
from handlers.registry import get_action
from handlers.retry import describe_error
from handlers.subnets import blast_radius
from playbooks.auto import RULE_DECIDER, AutoRule, matching_rule
from playbooks.catalogue import (
    DEFAULT_PLAYBOOK,
    RELEASE,
    Playbook,
    Step,
    applied_change,
    get_playbook,
    release_playbook,
)
from playbooks.errors import (
    AlreadyDecided,
    AwsLookupFailed,
    BadInput,
    CordonError,
    NotAuthorized,
    RequestExpired,
    TargetNotFound,
    UnknownIncident,
)
from playbooks.findings import Proposal
from playbooks.fleet import open_fleet_release
from playbooks.lifecycle import NoObserver, Observer
from playbooks.models import CARD, THREAD, Decision, Incident, Message, StepRecord, utcnow
from playbooks.requests import ContainRequest
from playbooks.runner import Worker
from playbooks.store import (
    DENIED,
    EXPIRED,
    OPEN_STATES,
    PENDING,
    RELEASABLE,
    RELEASED,
    RETRYABLE,
    Store,
)

log = logging.getLogger("cordon.service")


@dataclass(frozen=True)
class Click:
    """Who clicked, and on which message: a decision is accepted only from its card."""

    user: str
    channel: str
    message_ts: str
    team: str = ""


@dataclass(frozen=True)
class IncidentReport:
    incident: Incident
    steps: list[StepRecord]
    decisions: list[Decision]


class Cordon:
    def __init__(
        self,
        store: Store,
        clients_for: Callable[..., Clients],
        regions: Sequence[str],
        approval_ttl_seconds: int,
        worker: Worker | None = None,
        wide_approvals: int = 2,
        accounts: dict[str, str] | None = None,
        is_approver: Callable[[str], bool] | None = None,
        break_glass: Sequence[str] = (),
        observer: Observer | None = None,
        auto_rules: Sequence[AutoRule] = (),
    ) -> None:
        self.observer = observer or NoObserver()
        self.auto_rules = list(auto_rules)
        # Who a contained bucket's deny still lets in, besides Cordon's own role.
        self.break_glass = list(break_glass)
        self.accounts = dict(accounts or {})
        # Who may decide; every entry point (button, modal, API) goes through here.
        self.is_approver = is_approver or (lambda _user: True)
        self.store = store
        self.clients_for = clients_for
        self.regions = list(regions)
        self.approval_ttl_seconds = approval_ttl_seconds
        self.worker = worker
        self.wide_approvals = wide_approvals
        self._propose_lock = threading.Lock()

    # requests ----------------------------------------------------------------------

    def lookup_instance(self, instance_id: str, region: str | None = None,
                        account: str | None = None) -> dict[str, Any]:
        regions, accounts = self.places(region, account)
        places = [(a, r) for a in accounts for r in regions]
        try:
            with acting_as("lookup-instance"):
                return ec2_lookup.find_instance(
                    lambda place: self.clients_for(place[1], place[0]), instance_id, places)
        except ec2_lookup.AmbiguousTarget as exc:
            where = ", ".join(f"account={a} region={r}" if a else f"region={r}"
                              for a, r in exc.places)
            raise BadInput(f"{instance_id} exists in more than one place ({where}); say which "
                           "with `account=` and/or `region=`") from exc
        except ec2_lookup.TargetNotFound as exc:
            where = ", ".join(exc.searched)
            if exc.errors:
                errs = "; ".join(f"{r}: {e}" for r, e in exc.errors.items())
                raise AwsLookupFailed(f"{instance_id} not found in {where} ({errs})") from exc
            raise TargetNotFound(f"no instance {instance_id} in {where}") from exc
        except Exception as exc:
            err = describe_error(exc)
            raise AwsLookupFailed(f"could not look up {instance_id}: {err}") from exc

    def resolve_instance(self, name: str | None = None, private_ip: str | None = None,
                         region: str | None = None, account: str | None = None
                         ) -> tuple[str, str, str | None]:
        """An instance by the names people have — its exact Name tag or a private IPv4
        address — across the configured accounts and regions: (id, region, account).
        None found, or several: BadInput, with the candidates listed."""
        regions, accounts = self.places(region, account)
        places = [(a, r) for a in accounts for r in regions]
        what = f"named `{name}`" if name is not None else f"with private IP `{private_ip}`"
        try:
            with acting_as("lookup-instance"):
                found, errors = ec2_lookup.search_instances(
                    lambda place: self.clients_for(place[1], place[0]), places, name,
                    private_ip)
        except Exception as exc:
            raise AwsLookupFailed(f"could not look for an instance {what}: "
                                  f"{describe_error(exc)}") from exc
        where = ", ".join(f"{a}/{r}" if a else r for a, r in places)
        if not found:
            errs = "; ".join(f"{r}: {e}" for r, e in errors.items())
            if errs:
                raise AwsLookupFailed(f"no instance {what} found in {where} ({errs})")
            raise TargetNotFound(f"no instance {what} in {where} (the match is exact)")
        if len(found) > 1:
            lines = []
            for (acct, reg), inst in found[:20]:
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                lines.append(f"• `{inst['InstanceId']}` {tags.get('Name', '')} — "
                             f"{inst.get('State', {}).get('Name', '?')}, "
                             f"{inst.get('PrivateIpAddress', '')} in "
                             f"{acct + '/' if acct else ''}{reg}")
            more = f"\n… and {len(found) - 20} more" if len(found) > 20 else ""
            raise BadInput(f"{len(found)} instances {what}; say which by id (no card was "
                           "made):\n" + "\n".join(lines) + more)
        (acct, reg), inst = found[0]
        return str(inst["InstanceId"]), reg, acct

    def places(self, region: str | None, account: str | None
                ) -> tuple[list[str], list[str | None]]:
        if region is not None and region not in self.regions:
            raise BadInput(f"region `{region}` is not configured; "
                           f"configured: {', '.join(self.regions)}")
        if account is not None and account not in self.accounts:
            known = ", ".join(self.accounts) or "none (Cordon acts in its own account)"
            raise BadInput(f"account `{account}` is not configured; configured: {known}")
        return ([region] if region else self.regions,
                [account] if account else list(self.accounts) or [None])

    def open_request(self, req: ContainRequest, facts: dict[str, Any],
                     fleet_id: str | None = None) -> Incident:
        playbook = get_playbook(req.playbook)
        if playbook is None:
            raise BadInput(f"unknown playbook `{req.playbook}`")
        options = dict(req.options or {})
        unknown = set(options) - set(playbook.options)
        if unknown:
            raise BadInput(f"`{'=`, `'.join(sorted(unknown))}=` does not apply to the "
                           f"`{playbook.name}` playbook")
        existing = self.store.open_for_target(req.instance_id)
        if existing is not None:
            raise BadInput(f"{req.instance_id} already has an open request, "
                           f"{existing.id} ({existing.status}); see `/contain status "
                           f"{existing.id}`")
        if playbook.wide:
            try:
                with acting_as("blast-radius"):
                    clients = self.clients_for(facts["region"], facts.get("account_name"))
                    facts = {**facts, "blast": blast_radius(clients, facts, playbook.wide,
                                                            options)}
            except Exception as exc:
                raise AwsLookupFailed(f"could not work out what else `{playbook.name}` would "
                                      f"hit: {describe_error(exc)}") from exc
        facts = {**facts, "early": self.observe_early(playbook, req.instance_id, facts)}
        incident = self.store.create_incident(
            ttl_seconds=self.approval_ttl_seconds,
            approvals_required=self.wide_approvals if playbook.wide else 1,
            options=options,
            kind="instance",
            target_id=req.instance_id,
            region=facts["region"],
            account=facts.get("account", ""),
            playbook=req.playbook,
            reason=req.reason,
            requester=req.requester,
            channel_id=req.channel_id,
            facts=facts,
            fleet_id=fleet_id,
        )
        log.info("request opened", extra={"incident": incident.id, "target": req.instance_id,
                                          "playbook": req.playbook})
        return incident

    def observe_early(self, playbook: Playbook, instance_id: str, facts: dict[str, Any]
                      ) -> dict[str, dict[str, Any]]:
        """Before approval, what each step would capture after it (`Action.observe_early`):
        the protections, the group membership, the ENIs — and the VPC's isolation groups
        made ready. After the click the changes go out with no describe in front of
        them. A step whose observation fails captures after the click, as before."""
        target = Target(kind="instance", resource_id=instance_id, region=facts["region"],
                        account=facts.get("account") or None, incident_id="", facts=facts)
        clients = self.clients_for(facts["region"], facts.get("account_name"))
        steps = [s for s in playbook.for_target(facts).steps if s.mode == "apply"]

        def one(step: Step) -> tuple[str, dict[str, Any] | None]:
            with acting_as(step.action):
                try:
                    return step.name, get_action(step.action).observe_early(
                        StepContext(target=target, clients=clients))
                except Exception as exc:
                    log.warning("not observed before approval", extra={
                        "step": step.name, "error": describe_error(exc).code})
                    return step.name, None

        return {name: prior for name, prior in parallel(one, steps) if prior is not None}

    def open_release(self, query: str, reason: str, requester: str, channel_id: str
                     ) -> Incident:
        """A request to undo a containment, found by incident id or instance id."""
        if query.startswith("CRD-"):
            parent = self.store.get(query)
        else:
            parent = self.store.latest_containment(query)
        if parent is None or parent.kind == "release":
            raise UnknownIncident(f"no containment of `{query}` is recorded; nothing to release")
        if parent.status in OPEN_STATES:
            raise BadInput(f"{parent.id} is still {parent.status}; release it once it has run")
        if parent.status == RELEASED:
            raise BadInput(f"{parent.id} was already released")
        if parent.status not in RELEASABLE:
            raise BadInput(f"{parent.id} was {parent.status}: it changed nothing, so there is "
                           "nothing to release")
        pending = self.store.open_release_for(parent.id)
        if pending is not None:
            raise BadInput(f"{parent.id} already has a release request, {pending.id} "
                           f"({pending.status})")
        if parent.kind == "fleet":
            return open_fleet_release(self, parent, reason, requester, channel_id)
        return self.release_request(parent, reason, requester, channel_id)

    def release_request(self, parent: Incident, reason: str, requester: str, channel_id: str,
                        fleet_id: str | None = None,
                        extra_facts: dict[str, Any] | None = None) -> Incident:
        """The release of one containment: its undo plan from the recorded prior states."""
        steps = self.store.steps(parent.id)
        plan = release_playbook([(s.name, applied_change(s)) for s in steps],
                                "key" if parent.kind == "key" else "instance")
        captured = {s.name: s.captured for s in steps}
        undo = [(s.name, get_action(s.action).describe_undo(captured.get(s.action) or {}))
                for s in plan.steps if s.mode == "undo"]
        parent_playbook = get_playbook(parent.playbook)
        wide = parent_playbook is not None and parent_playbook.wide is not None
        incident = self.store.create_incident(
            ttl_seconds=self.approval_ttl_seconds, kind="release", parent_id=parent.id,
            approvals_required=self.wide_approvals if wide else 1,
            target_id=parent.target_id, region=parent.region, account=parent.account,
            playbook=RELEASE, reason=reason, requester=requester, channel_id=channel_id,
            facts={**(parent.facts or {}), "release_of": parent.id,
                   "release_of_status": parent.status, "undo": undo, **(extra_facts or {})},
            fleet_id=fleet_id,
        )
        log.info("release requested", extra={"incident": incident.id, "parent": parent.id})
        return incident

    def retry(self, incident_id: str, user_id: str, messages: Sequence[Message] = ()
              ) -> Incident:
        """failed / partial → approved, with its messages, in one write. A fleet's retry
        retries each member that failed or is partially contained (first: should the
        process die between, those members still run), then starts the fleet again."""
        current = self.get(incident_id)
        if current.kind == "fleet" and current.status in RETRYABLE:
            for member in self.store.members(incident_id):
                if member.status in RETRYABLE and self.store.open_release_for(member.id) is None:
                    self.store.retry(member.id, user_id)
        if not self.store.retry(incident_id, user_id, messages):
            incident = self.get(incident_id)
            release = self.store.open_release_for(incident_id)
            if release is not None:
                raise AlreadyDecided(f"{incident_id} has a release in progress, {release.id} "
                                     f"({release.status}); containment and undo never run at "
                                     "once, so it cannot be retried now")
            raise AlreadyDecided(f"{incident_id} is {incident.status}; only a failed or "
                                 "partial run can be retried")
        if self.worker is not None:
            self.worker.submit(incident_id)
        return self.get(incident_id)

    def snapshot_reports(self) -> list[tuple[Incident, dict[str, str]]]:
        """Runs whose snapshots have all finished (completed or failed), each reported
        once, whichever replica looks first."""
        from handlers.evidence import snapshot_states

        reports = []
        for incident, step in self.store.snapshots_to_follow():
            ids = [s["id"] for s in (step.details or {}).get("snapshots", [])]
            try:
                with acting_as("snapshot-follow-up"):
                    clients = self.clients_for(incident.region,
                                               (incident.facts or {}).get("account_name"))
                    states = snapshot_states(clients, ids)
            except Exception as exc:
                log.warning("snapshot follow-up failed", extra={
                    "incident": incident.id, "error": describe_error(exc).code})
                continue
            finished = all(state in ("completed", "error") for state in states.values())
            if finished and self.store.claim_snapshot_report(incident.id) and states:
                reports.append((incident, states))
        return reports

    def expire_revocations(self, now: datetime | None = None) -> list[tuple[Incident, str]]:
        """Remove the revocations whose tokens have all expired, each once; what was done,
        by incident, for its thread."""
        from handlers.arns import iam_arn
        from handlers.revocation import expire

        moment = now or utcnow()
        done = []
        for rev in self.store.revocations_due(moment):
            incident = self.store.get(rev.incident_id)
            if incident is None:
                continue
            try:
                with acting_as("revocation-expiry"):
                    clients = self.clients_for(incident.region,
                                               (incident.facts or {}).get("account_name"))
                    facts = incident.facts or {}
                    arn = iam_arn(incident.region, str(incident.account or facts.get("account")
                                                       or ""),
                                  "user" if rev.kind == "user" else "role", rev.principal)
                    note = expire(clients, {"kind": rev.kind, "principal": rev.principal,
                                            "policy": rev.policy, "sid": rev.sid,
                                            "cutoff": rev.cutoff}, moment.replace(tzinfo=UTC),
                                  self.store.principal_lock, arn)
            except Exception as exc:
                log.warning("revocation not removed yet", extra={
                    "incident": incident.id, "error": describe_error(exc).code})
                continue
            if self.store.claim_revocation(rev.id, note):
                done.append((incident, note))
        return done

    def propose(self, p: Proposal, channel: str, post_card: Callable[[Incident], None],
                note: Callable[[Incident, Proposal, bool], Message],
                lookback_days: int = 7) -> tuple[str, Incident]:
        """An alert's proposal: a new card in `channel` ("card") — or, while a
        containment of the resource is open or holds (contained, even partly, or failed),
        a note in that card's thread ("noted"), once per finding; a later update of that
        finding whose count changed updates its note ("updated"); "seen" when nothing
        changed. After a containment was decided (released, denied) or left to expire,
        the same finding proposes again only when its severity rose ("decided"). The
        requester is the alert's source, so any approver may approve. Nothing changes in
        AWS before approval (but for the isolation groups made ready, as for any card). A
        target that cannot be found raises CordonError."""
        with self._propose_lock, self.store.target_lock(p.resource_id):
            existing = self.store.in_force_for_target(p.resource_id)
            if existing is not None:
                if existing.card_ts is None and (existing.facts or {}).get("source"):
                    post_card(existing)  # made by an intake that stopped before posting it
                outcome = self.store.add_finding(
                    existing.id, p.finding_id, lambda again: note(existing, p, again),
                    p.count, p.severity)
                return ("seen" if outcome == "seen" else "noted"), existing
            decided = self._decided_before(p)
            if decided is not None:
                return "decided", decided
            alert = {"source": p.source, "finding": p.facts(), "findings": [p.finding_id],
                     "finding_counts": {p.finding_id: p.count} if p.count is not None else {},
                     "finding_severities": ({p.finding_id: p.severity}
                                            if p.severity is not None else {})}
            if p.kind == "key":
                incident = self.open_key_request(p.resource_id, p.reason, p.source, channel,
                                                 {}, lookback_days, extra_facts=alert)
            elif p.kind == "bucket":
                incident = self.open_bucket_request(
                    p.resource_id.rpartition(":")[2], p.reason, p.source, channel,
                    account_id=p.account or None, extra_facts=alert)
            elif p.kind in ("user", "role"):
                prefix, _, name = p.resource_id.partition(f":{p.kind}/")
                opener = self.open_user_request if p.kind == "user" else self.open_role_request
                incident = opener(name, p.reason, p.source, channel,
                                  account_id=prefix.split(":")[4], extra_facts=alert)
            else:
                region = p.region if p.region in self.regions else None
                facts = self.lookup_instance(p.resource_id, region, self._account_of(p.account))
                rule = self._auto_rule(p)
                incident = self.open_request(ContainRequest(
                    instance_id=p.resource_id, playbook=rule.action if rule else p.playbook,
                    reason=p.reason, requester=p.source, channel_id=channel),
                    {**facts, **alert})
                if rule is not None and self.store.auto_decide(incident.id, rule.text,
                                                               RULE_DECIDER):
                    # The cut starts before the card is posted: nobody has to click.
                    log.warning("contained automatically", extra={
                        "incident": incident.id, "rule": rule.text, "finding": p.finding_id})
                    if self.worker is not None:
                        self.worker.submit(incident.id)
                    incident = self.get(incident.id)
            try:
                post_card(incident)
            except CordonError as exc:
                if incident.auto_rule is None:
                    raise
                # The cut is under way whatever Slack says: whoever reads this must know.
                raise BadInput(f"{exc} The instance IS being isolated automatically (rule "
                               f"`{incident.auto_rule}`, {incident.id}): see `/contain "
                               f"status {incident.id}`, release with `/contain release "
                               f"{incident.id}`") from exc
            return "card", incident

    def _auto_rule(self, p: Proposal) -> AutoRule | None:
        """The CORDON_AUTO_CONTAIN rule the finding matches — never for a finding whose
        automatic containment was made before (and since released)."""
        rule = matching_rule(self.auto_rules, p)
        if rule is None:
            return None
        earlier = self.store.auto_contained_before(p.resource_id, p.finding_id)
        if earlier is not None:
            log.info("finding matches an automatic rule, but it was contained automatically "
                     "before: proposed only", extra={"earlier": earlier.id})
            return None
        return rule

    def review_auto(self, incident_id: str, click: Click, keep: bool) -> Incident:
        """Keep (go on with `full`, approved by the person who kept it) or Release an
        automatic containment, from its card, by an approver. Returns the incident it
        started (the `full` run or the release), whose own card the caller posts."""
        incident = self.get(incident_id)
        action = "keep" if keep else "release"
        if incident.auto_rule is None:
            raise BadInput(f"{incident_id} was not contained automatically")
        self.authorize(incident, click, action)  # its card, and an approver
        if incident.status in OPEN_STATES:
            raise BadInput(f"{incident_id} is still {incident.status}: keep or release it once "
                           "its cut has run")
        if not self.store.review_auto(incident_id, click.user, action):
            raise AlreadyDecided(f"{incident_id} was already kept or released")
        if keep:
            facts = {k: v for k, v in (incident.facts or {}).items()
                     if k not in ("early", "plan")}
            follow = self.open_request(ContainRequest(
                instance_id=incident.target_id, playbook=DEFAULT_PLAYBOOK,
                reason=f"kept after automatic isolation ({incident.id}): {incident.reason}",
                requester=incident.requester, channel_id=incident.channel_id),
                {**facts, "kept_from": incident.id})
        else:
            follow = self.release_request(incident, f"released from the card of {incident.id}",
                                          click.user, incident.channel_id)
        self.store.decide(follow.id, click.user, True)
        if self.worker is not None:
            self.worker.submit(follow.id)
        log.info("automatic containment reviewed", extra={
            "incident": incident_id, "by": click.user, "action": action, "started": follow.id})
        return self.get(follow.id)

    def _decided_before(self, p: Proposal) -> Incident | None:
        """The earlier containment of the resource this very finding was decided in
        (released, denied, expired), unless the finding's severity has risen since."""
        for earlier in self.store.for_target(p.resource_id, limit=20):
            facts = earlier.facts or {}
            if earlier.kind in ("release", "fleet") or p.finding_id not in (
                    facts.get("findings") or []):
                continue
            known = (facts.get("finding_severities") or {}).get(p.finding_id)
            if known is None and (facts.get("finding") or {}).get("finding_id") == p.finding_id:
                known = facts["finding"].get("severity")
            rose = p.severity is not None and known is not None and p.severity > known
            return None if rose else earlier
        return None

    def _account_of(self, account_id: str) -> str | None:
        """The configured account name of an account id (None: Cordon's own account)."""
        if not self.accounts or not account_id:
            return None
        name = next((n for n, arn in self.accounts.items() if account_id_of(arn) == account_id),
                    None)
        if name is None:
            raise BadInput(f"account {account_id} is not in CORDON_ACCOUNTS")
        return name

    def open_key_request(self, key_id: str, reason: str, requester: str, channel_id: str,
                         options: dict[str, str], lookback_days: int = 7,
                         extra_facts: dict[str, Any] | None = None) -> Incident:
        """A leaked access key: who owns it, what it may do; a temporary key's role."""
        own_clients = self.clients_for(self.regions[0])
        try:
            with acting_as("lookup-key"):
                owner = own_clients.sts.get_access_key_info(AccessKeyId=key_id)["Account"]
                name = next((n for n, arn in self.accounts.items()
                             if account_id_of(arn) == owner), None)
                if self.accounts and name is None:
                    raise access_keys.KeyNotFound(
                        f"{key_id} belongs to account {owner}, which is not in CORDON_ACCOUNTS")
                clients = self.clients_for(self.regions[0], name)
                facts = access_keys.describe_key(clients, key_id, owner)
                facts["account_name"] = name
                if name is None:
                    own = own_clients.sts.get_caller_identity()["Account"]
                    if owner != own:
                        raise access_keys.KeyNotFound(
                            f"{key_id} belongs to account {owner}; Cordon acts in {own}")
        except access_keys.KeyNotFound as exc:
            raise TargetNotFound(str(exc)) from exc
        except Exception as exc:
            raise AwsLookupFailed(f"could not look up {key_id}: {describe_error(exc)}") from exc
        playbook = "key"
        if facts["temporary"]:
            role = options.get("role")
            if not role:
                try:
                    with acting_as("lookup-key"):
                        role = access_keys.role_of_temporary_key(clients, key_id, lookback_days,
                                                                 self.regions)
                except Exception as exc:
                    role, why = None, f"CloudTrail could not be read ({describe_error(exc).code})"
                else:
                    why = "CloudTrail has no event of it"
                if not role:
                    raise BadInput(
                        f"{key_id} is a temporary key: it cannot be deactivated, and the role "
                        f"that issued it is not known — {why}. If you know the role, type "
                        f"`/contain key {key_id} role=NAME reason…` to revoke every session "
                        "of that role issued before now (all of them, legitimate ones too).")
            facts["role"] = role
            playbook = "key-temporary"
        existing = self.store.open_for_target(key_id)
        if existing is not None:
            raise BadInput(f"{key_id} already has an open request, {existing.id} "
                           f"({existing.status}); see `/contain status {existing.id}`")
        facts["region"] = self.regions[0]
        facts.update(extra_facts or {})
        incident = self.store.create_incident(
            ttl_seconds=self.approval_ttl_seconds, kind="key", target_id=key_id,
            region=self.regions[0], account=facts.get("account", ""), playbook=playbook,
            reason=reason, requester=requester, channel_id=channel_id, facts=facts,
            options={k: v for k, v in options.items() if k == "console"},
        )
        log.info("key request opened", extra={"incident": incident.id, "playbook": playbook})
        return incident

    def _iam_place(self, account: str | None, account_id: str | None
                   ) -> tuple[Clients, str | None]:
        """The clients for an IAM principal named by `account=` or by its ARN's account
        id (one of CORDON_ACCOUNTS, when any is configured), and that account's name."""
        if account is not None and account not in self.accounts:
            known = ", ".join(self.accounts) or "none (Cordon acts in its own account)"
            raise BadInput(f"unknown account `{account}`; accounts: {known}.")
        if account_id is not None and self.accounts:
            account = next((n for n, arn in self.accounts.items()
                            if account_id_of(arn) == account_id), None)
            if account is None:
                raise TargetNotFound(f"account {account_id} is not in CORDON_ACCOUNTS")
        return self.clients_for(self.regions[0], account), account

    def _look_up(self, kind: str, name: str, clients: Clients, account_id: str | None,
                 describe: Callable[[str], dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        """The account Cordon acts in there, and what `describe` finds of the user or
        role in it; an ARN naming another account, or no such principal, is not found."""
        try:
            with acting_as(f"lookup-{kind}"):
                owner = str(clients.sts.get_caller_identity()["Account"])
                if account_id is not None and account_id != owner:
                    raise TargetNotFound(f"the ARN names account {account_id}; Cordon acts "
                                         f"in {owner}")
                return owner, describe(owner)
        except TargetNotFound:
            raise
        except (iam_users.UserNotFound, iam_roles.RoleNotFound) as exc:
            raise TargetNotFound(str(exc)) from exc
        except Exception as exc:
            raise AwsLookupFailed(f"could not look up IAM {kind} {name}: "
                                  f"{describe_error(exc)}") from exc

    def _open_principal(self, kind: str, name: str, facts: dict[str, Any], owner: str,
                        account: str | None, reason: str, requester: str, channel_id: str,
                        options: dict[str, str], extra_facts: dict[str, Any] | None
                        ) -> Incident:
        # Kept without the principal's path: the ARN a finding or a person gives may
        # have none.
        arn = facts[f"{kind}_arn"]
        target = f"{arn.split(f':{kind}/')[0]}:{kind}/{name}"
        existing = self.store.open_for_target(target)
        if existing is not None:
            raise BadInput(f"{name} already has an open request, {existing.id} "
                           f"({existing.status}); see `/contain status {existing.id}`")
        facts.update(account_name=account, region=self.regions[0], **(extra_facts or {}))
        incident = self.store.create_incident(
            ttl_seconds=self.approval_ttl_seconds, kind=kind, target_id=target,
            region=self.regions[0], account=owner, playbook=kind, reason=reason,
            requester=requester, channel_id=channel_id, facts=facts, options=options)
        log.info(f"{kind} request opened", extra={"incident": incident.id})
        return incident

    def open_user_request(self, user: str, reason: str, requester: str, channel_id: str,
                          account: str | None = None, account_id: str | None = None,
                          extra_facts: dict[str, Any] | None = None) -> Incident:
        """A compromised IAM user: its credentials and what it may do, for the card's dry
        run. `account` names one of CORDON_ACCOUNTS; an ARN's `account_id` finds it."""
        clients, account = self._iam_place(account, account_id)
        owner, facts = self._look_up("user", user, clients, account_id,
                                     lambda owner: iam_users.describe_user(clients, user, owner))
        facts["plan_lines"] = iam_users.plan_lines(facts)
        return self._open_principal("user", user, facts, owner, account, reason, requester,
                                    channel_id, {}, extra_facts)

    def open_role_request(self, role: str, reason: str, requester: str, channel_id: str,
                          account: str | None = None, account_id: str | None = None,
                          options: dict[str, str] | None = None,
                          extra_facts: dict[str, Any] | None = None) -> Incident:
        """A compromised IAM role: who may assume it and what uses it now (its instance
        profiles' running instances lose their current sessions too)."""
        clients, account = self._iam_place(account, account_id)
        owner, facts = self._look_up("role", role, clients, account_id,
                                     lambda owner: iam_roles.describe_role(
                                         clients, role, owner, list(self.regions)))
        chosen = dict(options or {})
        facts["plan_lines"] = iam_roles.plan_lines(facts, chosen.get("trust") == "deny")
        return self._open_principal("role", role, facts, owner, account, reason, requester,
                                    channel_id, chosen, extra_facts)

    def open_bucket_request(self, bucket: str, reason: str, requester: str, channel_id: str,
                            account: str | None = None, account_id: str | None = None,
                            extra_facts: dict[str, Any] | None = None) -> Incident:
        """An S3 bucket: its access settings now and after, for the card's dry run; who
        the deny will still let in (CORDON_BREAK_GLASS_ARNS and Cordon's own role)."""
        clients, account = self._iam_place(account, account_id)
        try:
            with acting_as("lookup-bucket"):
                caller = clients.sts.get_caller_identity()
                owner = caller["Account"]
                if account_id and account_id != owner:
                    raise s3_buckets.BucketNotFound(
                        f"the finding names account {account_id}; Cordon acts in {owner}")
                s3 = clients.client("s3")
                try:
                    where = s3.get_bucket_location(Bucket=bucket).get("LocationConstraint")
                except Exception as exc:
                    if describe_error(exc).code == "NoSuchBucket":
                        raise s3_buckets.BucketNotFound(f"no S3 bucket {bucket}") from exc
                    raise
                region = where or "us-east-1"
                state = s3_buckets.prior_state(clients.in_region(region).client("s3"), bucket)
        except s3_buckets.BucketNotFound as exc:
            raise TargetNotFound(str(exc)) from exc
        except Exception as exc:
            raise AwsLookupFailed(f"could not read S3 bucket {bucket}: "
                                  f"{describe_error(exc)}") from exc
        partition = caller["Arn"].split(":")[1]
        target = f"arn:{partition}:s3:::{bucket}"
        existing = self.store.open_for_target(target)
        if existing is not None:
            raise BadInput(f"{bucket} already has an open request, {existing.id} "
                           f"({existing.status}); see `/contain status {existing.id}`")
        allowed = sorted({*self.break_glass, s3_buckets.role_of(caller["Arn"])})
        facts = {"bucket": bucket, "bucket_arn": target, "partition": partition,
                 "account": owner, "account_name": account, "region": region,
                 "state": state, "allowed": allowed,
                 "plan_lines": s3_buckets.plan_lines(state, allowed), **(extra_facts or {})}
        incident = self.store.create_incident(
            ttl_seconds=self.approval_ttl_seconds, kind="bucket", target_id=target,
            region=region, account=owner, playbook="bucket", reason=reason,
            requester=requester, channel_id=channel_id, facts=facts, options={})
        log.info("bucket request opened", extra={"incident": incident.id})
        return incident

    def card_posted(self, incident_id: str, channel_id: str, ts: str, team_id: str = "",
                    full_plan: Sequence[str] = ()) -> None:
        """The card is on Slack. `full_plan`: what the card could not show, to post in its
        thread (in order, exactly once, through the outbox); the card is approvable, and
        its buttons appear, only once the last part has been sent."""
        messages: list[Message] = [
            (THREAD, {"text": part, **({"plan_done": True} if n == len(full_plan) else {})})
            for n, part in enumerate(full_plan, start=1)]
        if messages:
            messages.append((CARD, {}))
        self.store.set_card(incident_id, channel_id, ts, team_id, messages,
                            plan_pending=bool(full_plan))

    def authorize(self, incident: Incident, click: Click, action: str) -> None:
        """A click must come from the incident's own card, and from someone allowed to
        make it: an approver who did not ask for it (the requester may only withdraw
        their own request). Refusals are recorded and change nothing."""
        team = (incident.facts or {}).get("team_id")
        if (click.channel != incident.channel_id or click.message_ts != incident.card_ts
                or (team and click.team and click.team != team)):
            self.refuse(incident.id, click.user, action, "refused: not this incident's card")
            log.warning("click refused: not from the incident's card", extra={
                "incident": incident.id, "user": click.user, "channel": click.channel})
            raise NotAuthorized("that button does not belong to this incident's card. "
                                "Nothing was changed.")
        if action == "approve" and (incident.facts or {}).get("plan") == "pending":
            self.refuse(incident.id, click.user, action, "refused: full plan not posted yet")
            raise NotAuthorized("the card cannot show the whole plan and the full plan is "
                                "not in its thread yet; read it there, then approve. "
                                "Nothing was changed.")
        if action == "approve" and click.user == incident.requester:
            self.refuse(incident.id, click.user, action, "refused: own request")
            raise NotAuthorized("you asked for this containment, so someone else must "
                                "approve it. Nothing was changed.")
        withdrawing = action == "deny" and click.user == incident.requester
        if not withdrawing and not self.is_approver(click.user):
            self.refuse(incident.id, click.user, action, "refused: not an approver")
            raise NotAuthorized(f"you are not authorised to {action} containments. "
                                "Nothing was changed.")

    def click(self, incident_id: str, click: Click, action: str,
              messages: Sequence[Message] = ()) -> Incident:
        """Approve, deny or retry from a card, checked first (see `authorize`)."""
        incident = self.get(incident_id)
        for _ in range(30):
            # The card is on Slack a moment before its ts is recorded here.
            if incident.card_ts is not None:
                break
            time.sleep(0.1)
            incident = self.get(incident_id)
        self.authorize(incident, click, action)
        if action == "retry":
            return self.retry(incident_id, click.user, messages)
        return self.decide(incident_id, click.user, action == "approve")

    def card_failed(self, incident_id: str) -> None:
        self.store.delete_incident(incident_id)

    # decisions ---------------------------------------------------------------------

    def get(self, incident_id: str) -> Incident:
        incident = self.store.get(incident_id)
        if incident is None:
            raise UnknownIncident(f"no incident {incident_id}")
        return incident

    def decide(self, incident_id: str, user_id: str, approve: bool) -> Incident:
        """pending → approved/denied exactly once; the loser learns what happened. A wide
        containment is approved when enough distinct approvers have agreed."""
        current = self.get(incident_id)
        if approve and current.approvals_required > 1 and current.status == PENDING:
            won, counted, voters = self.store.vote(incident_id, user_id)
            if won and self.worker is not None:
                self.worker.submit(incident_id)
            incident = self.get(incident_id)
            if won or counted:
                log.info("approval counted", extra={"incident": incident_id, "by": user_id,
                                                    "approvals": len(voters)})
                return incident
            if (incident.status == PENDING and user_id in voters
                    and incident.expires_at > utcnow()):
                raise AlreadyDecided(
                    f"your approval is already counted ({len(voters)} of "
                    f"{incident.approvals_required}); another approver must approve too")
        elif self.store.decide(incident_id, user_id, approve):
            if current.kind == "fleet" and not approve:
                self.store.hand_decision_to_members(incident_id, approve=False)
            incident = self.get(incident_id)
            log.info("decided", extra={"incident": incident_id, "by": user_id,
                                       "decision": incident.status})
            if not approve:
                for ended in (self.store.members(incident_id) if current.kind == "fleet"
                              else [incident]):
                    self._observe(ended)
            if approve and self.worker is not None:
                self.worker.submit(incident_id)
            return incident
        incident = self.get(incident_id)
        if incident.status == PENDING:  # still pending, so the deadline passed
            raise RequestExpired(f"{incident_id} has expired; nothing was changed")
        if incident.status == EXPIRED:
            raise RequestExpired(f"{incident_id} expired; nothing was changed")
        if incident.status == DENIED:
            raise AlreadyDecided(f"{incident_id} was already denied by {incident.decided_by}",
                                 by=incident.decided_by)
        raise AlreadyDecided(f"{incident_id} was already approved by {incident.decided_by}",
                             by=incident.decided_by)

    def refuse(self, incident_id: str, user_id: str, action: str, why: str) -> None:
        self.store.record_refusal(incident_id, user_id, action, why)

    def expire_due(self, messages: Sequence[Message] = ()) -> list[Incident]:
        expired = [i for i in (self.store.get(x) for x in self.store.expire_due(messages)) if i]
        for incident in expired:
            self._observe(incident)
        return expired

    def _observe(self, incident: Incident) -> None:
        if incident.kind == "fleet":
            return  # its members are counted, each when it ends
        try:
            self.observer.incident_ended(incident, [])
        except Exception:
            log.exception("the incident's end could not be observed")

    # reports -----------------------------------------------------------------------

    def report(self, incident_id: str) -> IncidentReport:
        return IncidentReport(self.get(incident_id), self.store.steps(incident_id),
                              self.store.decisions(incident_id))

    def reports_for_target(self, target_id: str) -> list[IncidentReport]:
        return [self.report(i.id) for i in self.store.for_target(target_id)]

    def recent(self, limit: int = 10) -> list[Incident]:
        return self.store.recent(limit)
