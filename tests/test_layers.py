"""The layering in DESIGN holds: bot/ never imports boto3, playbooks/ never imports
Slack, handlers/ knows neither Slack nor the store."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from handlers.base import all_actions

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "bot": {"boto3", "botocore"},
    "playbooks": {"slack_bolt", "slack_sdk", "bot"},
    "handlers": {"slack_bolt", "slack_sdk", "bot", "playbooks"},
}


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
    assert {f: m for f, m in offenders.items() if m} == {}


def test_every_action_declares_its_permissions_and_steps() -> None:
    actions = all_actions()
    assert "isolate-security-groups" in actions
    for name, cls in actions.items():
        assert cls.permissions, name
        assert all(p.count(":") == 1 and "*" not in p for p in cls.permissions), name
        assert cls.description, name


def test_the_readme_policy_grants_every_declared_permission() -> None:
    import json
    import re

    from handlers.ec2_lookup import PERMISSIONS
    from handlers.isolation import PREPARE_PERMISSIONS

    readme = (ROOT / "README.md").read_text()
    policy = json.loads(re.search(r"```json\n(.*?)```", readme, re.S).group(1))  # type: ignore[union-attr]
    granted: set[str] = set()
    for statement in policy["Statement"]:
        actions = statement["Action"]
        granted |= {actions} if isinstance(actions, str) else set(actions)
    from handlers.access_keys import LOOKUP_PERMISSIONS

    declared = set(PERMISSIONS) | set(PREPARE_PERMISSIONS) | set(LOOKUP_PERMISSIONS)
    for cls in all_actions().values():
        declared |= set(cls.permissions)
    assert declared - granted == set()
    assert granted - declared == set()
