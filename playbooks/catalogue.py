"""Playbooks as data: which actions, in which order, which of them run together."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Step:
    action: str
    # Steps of one phase run concurrently; phases run in order.
    phase: int = 1
    # A critical step that fails stops the run before the next phase: what comes after
    # would be unsafe (cutting the network of an instance its Auto Scaling group will
    # terminate) or untrue.
    critical: bool = False
    # Whether a critical step's failure also stops the later phases (None: it does).
    # Stripping the role and taking snapshots stay useful when the network cut failed.
    blocks: bool | None = None
    # Starts with the previous phase (its first move goes out alongside theirs) and holds
    # its second move until that phase's critical steps have answered: the cut's move to
    # cordon-open goes with the detach, its seal waits for the detach's answer.
    overlap: bool = False
    options: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    # "apply" for a containment; "undo" for a release.
    mode: str = "apply"
    # Only for some targets: "fleet" — an instance in an Auto Scaling group or registered
    # with a load balancer when the card was made (see `fleet_member`); "tracked" — one
    # whose flows cross a subnet where AWS always tracks them (see `tracked_elsewhere`).
    when: str | None = None
    # Part of the cut: once every such step of a run is verified, the target can no
    # longer act (the lifecycle's "cut verified", the time-to-cut figure).
    cut: bool = False

    @property
    def name(self) -> str:
        return self.action if self.mode == "apply" else f"undo-{self.action}"

    @property
    def stops_run(self) -> bool:
        return self.critical if self.blocks is None else self.blocks


@dataclass(frozen=True)
class Playbook:
    name: str
    summary: str
    steps: tuple[Step, ...]
    # Acts on a whole subnet ("nacl", "route") or VPC ("igw"): the card shows the blast
    # radius and more approvers must agree.
    wide: str | None = None
    options: tuple[str, ...] = ()
    # What it contains: an EC2 "instance", an access "key", an IAM "user" or "role".
    target: str = "instance"

    @property
    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def cut_steps(self) -> list[str]:
        return [s.name for s in self.steps if s.cut]

    def for_target(self, facts: dict[str, Any]) -> Playbook:
        """The steps that apply to this target (from the facts looked up for its card)."""
        steps = tuple(s for s in self.steps if s.when is None
                      or (s.when == "fleet" and fleet_member(facts))
                      or (s.when == "tracked" and tracked_elsewhere(facts)))
        return replace(self, steps=steps) if steps != self.steps else self

    def phases(self) -> list[list[Step]]:
        by_phase: dict[int, list[Step]] = {}
        for step in self.steps:
            by_phase.setdefault(step.phase, []).append(step)
        return [by_phase[k] for k in sorted(by_phase)]


def fleet_member(facts: dict[str, Any]) -> bool:
    """In an Auto Scaling group, or registered with a load balancer: its group would
    replace — terminate — it once its health checks fail behind a cut network."""
    return bool(facts.get("asg") or facts.get("target_groups") or facts.get("classic_elbs"))


def tracked_elsewhere(facts: dict[str, Any]) -> bool:
    """Some of its flows cross another subnet where AWS always tracks them (a NAT gateway,
    NLB/GWLB, endpoint or transit gateway attachment), or that could not be found out."""
    paths = facts.get("tracked_paths")
    return paths is None or bool(paths)


# Network-only playbooks never hand an Auto Scaling member to its group: for such an
# instance they first protect its evidence and detach it, exactly as `full` does.
FLEET_GUARD = (
    Step("protect-evidence", phase=1, when="fleet"),
    Step("detach-from-auto-scaling", phase=1, critical=True, when="fleet"),
)

PLAYBOOKS: dict[str, Playbook] = {
    "full": Playbook(
        name="full",
        summary="protect evidence, leave Auto Scaling, cut the network, strip the role, "
                "snapshot, image",
        steps=(
            Step("protect-evidence", phase=1),
            Step("detach-from-auto-scaling", phase=1, critical=True),
            Step("isolate-security-groups", phase=2, critical=True, overlap=True,
                 blocks=False, cut=True),
            # What the groups cannot end (flows through a NAT gateway, NLB/GWLB, endpoint,
            # transit gateway): ACL entries for its addresses, sent with the open move.
            Step("sever-tracked-flows", phase=2, overlap=True, when="tracked", cut=True),
            # After the cut: instance tags can be read from inside the instance (instance
            # metadata), so the attacker learns nothing before the network is gone.
            Step("tag-instance", phase=3, options={"status": "containing"}),
            Step("remove-instance-profile", phase=3),
            Step("capture-evidence", phase=3),
            Step("snapshot-volumes", phase=3),
            Step("create-image", phase=3),
            Step("verify-containment", phase=4),
        ),
    ),
    "isolate": Playbook(
        name="isolate",
        summary="cut the instance's network without leaving tracked connections alive",
        steps=(
            *FLEET_GUARD,
            Step("isolate-security-groups", phase=2, critical=True, overlap=True, cut=True),
            Step("sever-tracked-flows", phase=2, overlap=True, when="tracked", cut=True),
            Step("tag-instance", phase=3),
        ),
    ),
}

for _name, _summary, _action, _options in (
    ("nacl", "deny all traffic in and out of the instance's subnet(s) with a network ACL "
             "(stateless: existing connections end too); traffic inside the subnet is not "
             "cut", "isolate-subnet-nacl", ("mode",)),
    ("route", "give the instance's subnet(s) a route table with only the VPC-local route",
              "isolate-subnet-routes", ()),
    ("igw", "remove every route to the VPC's internet gateway", "remove-internet-routes", ()),
):
    PLAYBOOKS[_name] = Playbook(
        name=_name, summary=_summary,
        steps=(*FLEET_GUARD, Step(_action, phase=2, critical=True, cut=True),
               Step("tag-instance", phase=3)),
        wide=_name, options=_options,
    )

PLAYBOOKS["key"] = Playbook(
    name="key",
    summary="deactivate a leaked access key and revoke the sessions minted from it",
    steps=(
        Step("deactivate-access-key", phase=1, critical=True, cut=True),
        Step("revoke-sessions", phase=1, cut=True),
        Step("disable-console", phase=1),
        Step("review-activity", phase=2),
        Step("list-other-keys", phase=2),
    ),
    options=("console",), target="key",
)
PLAYBOOKS["key-temporary"] = Playbook(
    name="key-temporary",
    summary="a temporary key cannot be deactivated: revoke every older session of its role",
    steps=(
        Step("revoke-role-sessions", phase=1, critical=True, cut=True),
        Step("review-activity", phase=2),
    ),
    options=("role",), target="key",
)
PLAYBOOKS["user"] = Playbook(
    name="user",
    summary="cut every credential of an IAM user and deny its sessions issued before now",
    steps=(
        Step("deactivate-user-keys", phase=1, critical=True, cut=True),
        Step("revoke-sessions", phase=1, cut=True),
        Step("disable-console", phase=1, options={"console": "off"}),
        Step("deactivate-user-credentials", phase=1),
    ),
    target="user",
)
PLAYBOOKS["role"] = Playbook(
    name="role",
    summary="deny every session of an IAM role issued before now; trust=deny: nobody may "
            "assume it again until the release",
    steps=(
        Step("revoke-role-sessions", phase=1, critical=True, cut=True),
        Step("deny-role-trust", phase=1),
    ),
    options=("trust",), target="role",
)
PLAYBOOKS["bucket"] = Playbook(
    name="bucket",
    summary="record an S3 bucket's access settings, then block public access, turn ACLs "
            "off and deny everyone but the allow-list",
    steps=(Step("seal-bucket", phase=1, critical=True, cut=True),),
    target="bucket",
)
INSTANCE_PLAYBOOKS = {n: p for n, p in PLAYBOOKS.items() if p.target == "instance"}
# What one card may run on many instances: the playbooks that change only the instance
# (the wide ones change a whole subnet, which two members may share).
FLEET_PLAYBOOKS = {n: p for n, p in INSTANCE_PLAYBOOKS.items() if not p.wide}
# A fleet of this many or more needs as many approvers as a wide playbook.
FLEET_TWO_APPROVERS = 5

DEFAULT_PLAYBOOK = "full"
RELEASE = "release"


def get_playbook(name: str) -> Playbook | None:
    return PLAYBOOKS.get(name)


def applied(status: str, captured: bool, partial_undo: bool) -> bool:
    """Whether a containment step changed something that a release must undo: it
    succeeded with a recorded prior state — or it failed part-way, for an action whose
    failure can leave part of its change in place (`Action.partial_undo`). A failed
    detach, or a step that never ran, changed nothing: a release leaves it alone."""
    if not captured:
        return False
    from handlers.base import StepStatus

    return status == StepStatus.SUCCEEDED or (status == StepStatus.FAILED and partial_undo)


def release_playbook(contained: list[tuple[str, bool]], target: str = "instance") -> Playbook:
    """Undo, newest first, every step that applied a change and can be undone; then tag
    the instance released. `contained` is (action, applied) — see `applied`."""
    from handlers.registry import all_actions

    actions = all_actions()
    undo = [Step(name, phase=1, mode="undo") for name, changed in reversed(contained)
            if changed and name in actions and actions[name].reversible]
    steps = [Step(s.action, phase=n, mode="undo") for n, s in enumerate(undo, 1)]
    if target == "instance":
        steps.append(Step("mark-released", phase=len(steps) + 1))
    return Playbook(RELEASE, "undo the containment from its recorded prior state", tuple(steps))


def step_descriptions(playbook: Playbook) -> list[tuple[str, str]]:
    from handlers.registry import all_actions

    actions = all_actions()
    return [(s.name, actions[s.action].description) for s in playbook.steps]


def units_for(names: list[str] | None = None) -> list[str]:
    """The declared units (actions and look-ups) running these playbooks takes —
    releasing them included. All playbooks when `names` is empty."""
    chosen = [PLAYBOOKS[n] for n in names] if names else list(PLAYBOOKS.values())
    units = {"lookup-instance", "lookup-fleet", "snapshot-follow-up", "prepare", "assume-role",
             "preflight", "revocation-expiry", "findings-intake", "watch-cloudtrail"}
    for playbook in chosen:
        units |= {s.action for s in playbook.steps}
        if playbook.wide:
            units.add("blast-radius")
        if playbook.target == "key":
            units.add("lookup-key")
        elif playbook.target == "user":
            units.add("lookup-user")
        elif playbook.target == "role":
            units.add("lookup-role")
        elif playbook.target == "bucket":
            units.add("lookup-bucket")
        elif any(s.action in ("isolate-security-groups", "tag-instance") for s in playbook.steps):
            units.add("mark-released")
    return sorted(units)


def applied_change(step: Any) -> bool:
    """`applied` for a step record (status, captured state) of a containment."""
    from handlers.registry import all_actions

    action = all_actions().get(step.name)
    return applied(step.status, step.captured is not None,
                   bool(action is not None and action.partial_undo))
