"""Every action Cordon can run, by name: the one list playbooks, the IAM policy and the
release plan are built from. Adding an action means adding it here."""

from __future__ import annotations

from handlers.access_keys import (
    DeactivateAccessKey,
    DisableConsole,
    ListOtherKeys,
    ReviewActivity,
    RevokeRoleSessions,
    RevokeSessions,
)
from handlers.autoscaling import DetachFromAutoScaling
from handlers.base import Action, check_declared
from handlers.evidence import CaptureEvidence, CreateImage, SnapshotVolumes
from handlers.iam_roles import DenyRoleTrust
from handlers.iam_users import DeactivateUserCredentials, DeactivateUserKeys
from handlers.instance_profile import RemoveInstanceProfile
from handlers.isolation import IsolateSecurityGroups
from handlers.network_acl import IsolateSubnetNacl
from handlers.protection import ProtectEvidence
from handlers.route_table import IsolateSubnetRoutes, RemoveInternetRoutes
from handlers.s3_buckets import SealBucket
from handlers.summary import VerifyContainment
from handlers.tagging import MarkReleased, TagInstance
from handlers.tracked_flows import SeverTrackedFlows

ALL: tuple[type[Action], ...] = (
    ProtectEvidence, DetachFromAutoScaling, IsolateSecurityGroups, TagInstance,
    RemoveInstanceProfile, CaptureEvidence, SnapshotVolumes, CreateImage, VerifyContainment,
    MarkReleased, IsolateSubnetNacl, IsolateSubnetRoutes, RemoveInternetRoutes,
    DeactivateAccessKey, RevokeSessions, DisableConsole, ReviewActivity, ListOtherKeys,
    RevokeRoleSessions, SeverTrackedFlows, DeactivateUserKeys, DeactivateUserCredentials,
    DenyRoleTrust, SealBucket,
)

ACTIONS: dict[str, type[Action]] = {}
for _cls in ALL:
    check_declared(_cls)
    if _cls.name in ACTIONS:
        raise ValueError(f"two actions are named {_cls.name}")
    ACTIONS[_cls.name] = _cls


def all_actions() -> dict[str, type[Action]]:
    return dict(ACTIONS)


def get_action(name: str) -> Action:
    return ACTIONS[name]()
