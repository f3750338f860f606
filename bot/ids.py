"""Identifiers Slack sends back to us."""

from __future__ import annotations

from enum import StrEnum


class ActionId(StrEnum):
    APPROVE = "cordon_approve"
    DENY = "cordon_deny"
    RETRY = "cordon_retry"
    EXPORT = "cordon_export"
    KEEP = "cordon_keep"  # an automatic containment: go on with `full`
    RELEASE = "cordon_release"  # an automatic containment: undo it


COMMAND = "/contain"
# The contain form (from `/contain` alone and from the message shortcut).
CONTAIN_MODAL = "cordon_contain_modal"
MESSAGE_SHORTCUT = "cordon_contain_message"
