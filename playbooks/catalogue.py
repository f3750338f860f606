"""Playbooks as data: an ordered list of action names, readable at a glance."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Step:
    action: str
    # A critical step that fails stops the run: later steps would be unsafe or untrue.
    critical: bool = True


@dataclass(frozen=True)
class Playbook:
    name: str
    summary: str
    steps: tuple[Step, ...]

    @property
    def step_names(self) -> list[str]:
        return [s.action for s in self.steps]


PLAYBOOKS: dict[str, Playbook] = {
    "isolate": Playbook(
        name="isolate",
        summary="cut the instance's network without leaving tracked connections alive",
        steps=(
            Step("isolate-security-groups"),
            Step("tag-instance", critical=False),
        ),
    ),
}

DEFAULT_PLAYBOOK = "isolate"


def get_playbook(name: str) -> Playbook | None:
    return PLAYBOOKS.get(name)


def step_descriptions(playbook: Playbook) -> list[tuple[str, str]]:
    from handlers.base import all_actions

    actions = all_actions()
    return [(s.action, actions[s.action].description) for s in playbook.steps]
