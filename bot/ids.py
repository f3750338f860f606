"""Identifiers Slack sends back to us."""

from __future__ import annotations

from enum import StrEnum


class ActionId(StrEnum):
    APPROVE = "cordon_approve"
    DENY = "cordon_deny"
    RETRY = "cordon_retry"


COMMAND = "/contain"
