"""What a person asks for, before it is an incident."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContainRequest:
    instance_id: str
    playbook: str
    reason: str
    requester: str
    channel_id: str
    options: dict[str, str] | None = None
