"""The layering in DESIGN holds: bot/ never imports boto3 nor handlers/ — it goes through
playbooks/ — playbooks/ never imports Slack, handlers/ knows neither Slack nor the store,
and no product package imports the sandbox (the local AWS, the fake Slack, the fault
layer), which lives in a package of its own: only `python -m bot sandbox` starts it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from handlers.registry import all_actions

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "bot": {"boto3", "botocore", "handlers", "sandbox", "moto"},
    "playbooks": {"slack_bolt", "slack_sdk", "bot", "sandbox", "moto"},
    "handlers": {"slack_bolt", "slack_sdk", "bot", "playbooks", "sandbox", "moto"},
}
# The one way into the sandbox from the product: the CLI's `sandbox` command, whose import
# fails cleanly where the sandbox is not installed (the container image).
SANDBOX_DOOR = ("bot/__main__.py", "sandbox")


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_packages_import_only_what_their_layer_may(package: str) -> None:
    files = list((ROOT / package).rglob("*.py"))
    assert files
    offenders = {str(f.relative_to(ROOT)): sorted(imported_modules(f) & FORBIDDEN[package])
                 for f in files}
    door, allowed = SANDBOX_DOOR
    if door in offenders:
        offenders[door] = [m for m in offenders[door] if m != allowed]
    assert {f: m for f, m in offenders.items() if m} == {}


def test_the_image_copies_only_the_product() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")
              and "--from" not in line}
    assert {"bot", "playbooks", "handlers"} <= copied and "sandbox" not in copied
    assert "rm -rf" not in dockerfile


def test_every_action_declares_its_permissions_and_steps() -> None:
    actions = all_actions()
    assert "isolate-security-groups" in actions
    for name, cls in actions.items():
        assert cls.permissions, name
        assert all(p.count(":") == 1 and "*" not in p for p in cls.permissions), name
        assert cls.description, name


def test_the_readme_shows_the_generated_policy() -> None:
    import json
    import re

    from handlers.permissions import build_policy
    from playbooks.catalogue import units_for

    readme = (ROOT / "README.md").read_text()
    shown = json.loads(re.search(r"```json\n(.*?)```", readme, re.S).group(1))  # type: ignore[union-attr]
    assert shown == build_policy(units_for(None))


def test_the_policy_covers_every_step_without_wildcards() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "bot", "policy"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    policy = json.loads(out)
    granted = {a for st in policy["Statement"] for a in
               ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert all("*" not in a for a in granted)
    for name, cls in all_actions().items():
        assert set(cls.permissions) <= granted, name
    tagged = next(st for st in policy["Statement"] if st["Sid"] == "CreateOnlyTagged")
    assert "ec2:CreateSecurityGroup" in tagged["Action"]
    assert tagged["Condition"] == {"StringEquals": {"aws:RequestTag/cordon:managed": "true"}}
    only_isolate = json.loads(subprocess.run(
        [sys.executable, "-m", "bot", "policy", "--playbook", "isolate"], cwd=ROOT, check=True,
        capture_output=True, text=True).stdout)
    narrow = {a for st in only_isolate["Statement"] for a in st["Action"]}
    assert "ec2:ModifyNetworkInterfaceAttribute" in narrow and "iam:UpdateAccessKey" not in narrow


def test_an_iam_policy_linter_finds_nothing_in_the_generated_policy() -> None:
    """parliament, a real IAM policy linter, on the policy of every playbook and of all."""

    from handlers.permissions import build_policy
    from playbooks.catalogue import PLAYBOOKS, units_for
    from tests.conftest import policy_findings

    for names in [None, *([n] for n in PLAYBOOKS)]:
        assert policy_findings(build_policy(units_for(names))) == [], names


def test_tags_and_the_role_are_granted_only_as_cordon_needs_them() -> None:
    from handlers.permissions import build_policy
    from playbooks.catalogue import units_for

    by_sid = {st["Sid"]: st for st in build_policy(units_for(None))["Statement"]}
    # Tags on anything only when Cordon creates it; afterwards only cordon:* keys, so the
    # bot cannot mark someone else's group cordon:managed and change its rules.
    assert by_sid["TagWhatCordonCreates"]["Condition"] == {
        "StringEquals": {"ec2:CreateAction": ["CreateSecurityGroup", "CreateNetworkAcl",
                                              "CreateRouteTable", "CreateSnapshots",
                                              "CreateImage"]}}
    later = by_sid["TagOnlyCordonKeys"]
    assert set(later["Action"]) == {"ec2:CreateTags", "ec2:DeleteTags"}
    assert later["Condition"] == {"ForAllValues:StringLike": {"aws:TagKeys": ["cordon:*"]}}
    assert not any("security-group" in r for r in later["Resource"])
    assert by_sid["PassTheInstanceRoleBack"]["Condition"] == {
        "StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}
    # Only reads, and a deny, are on every resource.
    assert all(st["Resource"] != "*" for sid, st in by_sid.items()
               if sid != "Read" and st["Effect"] == "Allow"), [
        sid for sid, st in by_sid.items() if st["Resource"] == "*"]


def test_the_lock_pins_every_dependency_pyproject_declares() -> None:
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"],
              *[d for d in project["optional-dependencies"]["dev"] if not d.startswith("cordon")],
              *project["optional-dependencies"]["sandbox"]]
    pinned = {re.split(r"[=<>]", line)[0].lower().replace("_", "-")
              for line in (ROOT / "requirements.lock").read_text().splitlines()
              if line and not line.startswith("#")}
    names = {re.split(r"[\[<>=!~ ]", d)[0].lower().replace("_", "-") for d in wanted}
    assert names <= pinned, sorted(names - pinned)
    assert all("==" in line for line in (ROOT / "requirements.lock").read_text().splitlines()
               if line and not line.startswith("#"))


def test_every_action_class_is_in_the_registry() -> None:
    import inspect

    from handlers.base import Action
    from handlers.registry import ALL

    def concrete(cls: type) -> list[type]:
        found = []
        for sub in cls.__subclasses__():
            if not inspect.isabstract(sub) and getattr(sub, "name", ""):
                found.append(sub)
            found += concrete(sub)
        return found

    assert set(concrete(Action)) == set(ALL)


def _module_imports() -> dict[str, set[str]]:
    """Every product module and the product modules it imports — at the top, inside a
    function or under TYPE_CHECKING alike."""
    graph: dict[str, set[str]] = {}
    for package in ("bot", "playbooks", "handlers"):
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(parts)
            found: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    found |= {a.name for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module)
                    found |= {f"{node.module}.{a.name}" for a in node.names}
            graph[name] = found
    return {name: {m for m in deps if m in graph and m != name} for name, deps in graph.items()}


def test_no_import_circles() -> None:
    graph = _module_imports()
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in path:
                circles.append([*path[path.index(nxt):], nxt])
            elif len(path) < 12:
                visit(nxt, [*path, nxt])

    for start in sorted(graph):
        visit(start, [start])
    assert circles == []
