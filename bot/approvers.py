"""Who may decide: Slack user IDs and members of Slack user groups listed in
CORDON_APPROVERS. Group membership comes from `usergroups.users.list`, cached."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from playbooks.errors import CordonError

log = logging.getLogger("cordon.approvers")


class MembershipUnavailable(CordonError):
    pass


class ApproverPolicy:
    def __init__(self, approvers: list[str], client: WebClient, cache_ttl: int = 60,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.users = {a for a in approvers if a.startswith("U")}
        self.groups = [a for a in approvers if a.startswith("S")]
        self.client = client
        self.cache_ttl = cache_ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}
        self._lock = threading.Lock()

    def is_approver(self, user_id: str) -> bool:
        if user_id in self.users:
            return True
        return any(user_id in self._members(group) for group in self.groups)

    def _members(self, group_id: str) -> frozenset[str]:
        now = self.clock()
        with self._lock:
            cached = self._cache.get(group_id)
            if cached and now - cached[0] < self.cache_ttl:
                return cached[1]
        try:
            resp = self.client.usergroups_users_list(usergroup=group_id)
        except SlackApiError as exc:
            log.warning("usergroup lookup failed",
                        extra={"usergroup": group_id, "error": exc.response.get("error")})
            raise MembershipUnavailable(
                f"could not check membership of user group {group_id} "
                f"(`{exc.response.get('error')}`); nothing was changed, try again"
            ) from exc
        members = frozenset(resp.get("users") or [])
        with self._lock:
            self._cache[group_id] = (now, members)
        return members
