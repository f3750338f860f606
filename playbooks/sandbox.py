"""What the sandbox (`python -m bot sandbox`) needs of its local AWS, for bot/sandbox:
bot/ reaches handlers/ only through playbooks/. The seeded world lives in
handlers.sandbox_world (it speaks boto3)."""

from __future__ import annotations

from handlers.sandbox_world import (
    Fleet,
    LocalAws,
    World,
    add_network,
    describe_containment,
    group_rules,
    groups_by_eni,
    join_fleet,
    key_status,
    network_state,
    seed,
    seed_leaked_key,
)

__all__ = ["Fleet", "LocalAws", "World", "add_network", "describe_containment",
           "group_rules", "groups_by_eni", "join_fleet", "key_status", "network_state",
           "seed", "seed_leaked_key"]
