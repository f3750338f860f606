"""A compromised IAM user: every credential it has is cut, nothing about it is deleted
but its console password (IAM keeps no copy of a password to put back).

What real AWS does that the tests on moto cannot show:
- IAM is eventually consistent: a deactivated key, a deleted login profile or a new
  deny policy takes effect across AWS "within a few minutes" (usually seconds); a
  request already signed may still pass in that window.
- A deactivated access key, signing certificate, SSH public key or service-specific
  credential is refused by AWS at once it has propagated; sessions already minted from
  the user's keys (`sts:GetSessionToken`, `GetFederationToken`) live on until they expire:
  the `revoke-sessions` step's `aws:TokenIssueTime` deny is what ends them, and moto
  evaluates no policy.
- moto answers `ListServiceSpecificCredentials` with a 500: the step records that the
  list could not be read, says so in the thread, and goes on with the rest.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from handlers.access_keys import has_console, no_such_entity
from handlers.aws import Clients
from handlers.base import (
    Action,
    Artifact,
    Outcome,
    StepContext,
    StepFailed,
    VerificationFailed,
)
from handlers.fanout import parallel
from handlers.retry import describe_error

# What drawing a user's card reads (nothing is changed).
LOOKUP_PERMISSIONS = (
    "sts:GetCallerIdentity", "iam:GetUser", "iam:ListAccessKeys", "iam:GetLoginProfile",
    "iam:ListSigningCertificates",
    "iam:ListSSHPublicKeys", "iam:ListServiceSpecificCredentials", "iam:ListMFADevices",
    "iam:ListGroupsForUser", "iam:ListAttachedUserPolicies", "iam:ListUserPolicies",
)


LABELS = {"keys": "access keys", "certificates": "signing certificates",
          "ssh_keys": "SSH public keys", "service_credentials": "service-specific credentials"}


class UserNotFound(Exception):
    pass


def _when(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value or "")


def credentials(iam: Any, user: str, kinds: tuple[str, ...] = tuple(LABELS)) -> dict[str, Any]:
    """The user's credentials by kind, each [{id, status}]; a kind that could not be
    listed is None, with the error in `unreadable` (by the kind's label)."""
    calls = {
        "keys": lambda: [{"id": k["AccessKeyId"], "status": k["Status"]} for k in
                         iam.list_access_keys(UserName=user)["AccessKeyMetadata"]],
        "certificates": lambda: [{"id": c["CertificateId"], "status": c["Status"]} for c in
                                 iam.list_signing_certificates(UserName=user)["Certificates"]],
        "ssh_keys": lambda: [{"id": k["SSHPublicKeyId"], "status": k["Status"]} for k in
                             iam.list_ssh_public_keys(UserName=user)["SSHPublicKeys"]],
        "service_credentials": lambda: [
            {"id": c["ServiceSpecificCredentialId"], "status": c["Status"],
             "service": c.get("ServiceName", "")} for c in
            iam.list_service_specific_credentials(UserName=user)["ServiceSpecificCredentials"]],
    }

    def one(kind: str) -> tuple[str, Any, str | None]:
        try:
            return kind, calls[kind](), None
        except Exception as exc:  # a refusal, or an answer that could not be read
            if kind == "keys":
                raise  # the keys are the point: no card without them
            return kind, None, str(describe_error(exc))

    found: dict[str, Any] = {"unreadable": {}}
    for kind, value, error in parallel(one, list(kinds)):
        found[kind] = value
        if error:
            found["unreadable"][LABELS[kind]] = error
    return found


def describe_user(clients: Clients, user: str, account: str) -> dict[str, Any]:
    """Everything the card shows of a user: its credentials and what it may do."""
    iam = clients.client("iam")
    try:
        got = iam.get_user(UserName=user)["User"]
    except ClientError as exc:
        if no_such_entity(exc):
            raise UserNotFound(f"no IAM user {user} in account {account}") from exc
        raise

    def mfa() -> list[str]:
        return [d["SerialNumber"] for d in iam.list_mfa_devices(UserName=user)["MFADevices"]]

    def groups() -> list[str]:
        return [g["GroupName"] for g in iam.list_groups_for_user(UserName=user)["Groups"]]

    def attached() -> list[str]:
        return [p["PolicyName"] for p in
                iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]]

    def inline() -> list[str]:
        return list(iam.list_user_policies(UserName=user)["PolicyNames"])

    console, mfa_devices, group_names, attached_names, inline_names, creds = parallel(
        lambda f: f(), [lambda: has_console(iam, user), mfa, groups, attached, inline,
                        lambda: credentials(iam, user)])
    return {"user": user, "user_arn": got["Arn"], "account": account,
            "created": _when(got.get("CreateDate")),
            "password_last_used": _when(got.get("PasswordLastUsed")) or None,
            "console": console, "mfa_devices": mfa_devices, "groups": group_names,
            "attached_policies": attached_names, "inline_policies": inline_names, **creds}


def plan_lines(facts: dict[str, Any]) -> list[str]:
    """The card's dry run: each change, the value now and the value after."""
    lines = []
    for key in facts.get("keys") or []:
        after = "Inactive" if key["status"] == "Active" else key["status"]
        lines.append(f"access key {key['id']}: {key['status']} → {after}")
    lines.append("console password: " + ("set → deleted (cannot be put back)"
                                         if facts.get("console") else "none (unchanged)"))
    for kind, label in (("certificates", "signing certificate"), ("ssh_keys", "SSH key"),
                        ("service_credentials", "service-specific credential")):
        items = facts.get(kind)
        if items is None:
            lines.append(f"{label}s: not readable now — checked again when the step runs")
        for item in items or []:
            after = "Inactive" if item["status"] == "Active" else item["status"]
            lines.append(f"{label} {item['id']}: {item['status']} → {after}")
    lines.append("sessions issued before the cut: allowed → denied (aws:TokenIssueTime)")
    return lines


class DeactivateUserKeys(Action):
    name = "deactivate-user-keys"
    description = "deactivate every active access key of the user (none is deleted)"
    permissions = ("iam:ListAccessKeys", "iam:UpdateAccessKey")

    def _active(self, ctx: StepContext) -> list[str]:
        keys = ctx.clients.client("iam").list_access_keys(
            UserName=ctx.target.facts["user"])["AccessKeyMetadata"]
        return [k["AccessKeyId"] for k in keys if k["Status"] == "Active"]

    def check(self, ctx: StepContext) -> bool:
        ctx.memo["active"] = self._active(ctx)
        return not ctx.memo["active"]

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        # Exactly what a release reactivates: the keys active before the cut, no other.
        return {"user": ctx.target.facts["user"], "active": ctx.memo.get("active", [])}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        iam = ctx.clients.client("iam")
        parallel(lambda key: iam.update_access_key(UserName=captured["user"], AccessKeyId=key,
                                                   Status="Inactive"), captured["active"])
        # What the user was and could do at the cut, as the card showed it: evidence.
        facts = ctx.target.facts
        record = json.dumps({k: facts.get(k) for k in (
            "user", "user_arn", "account", "created", "password_last_used", "console",
            "mfa_devices", "groups", "attached_policies", "inline_policies", "keys",
            "certificates", "ssh_keys", "service_credentials")}, indent=2,
            sort_keys=True).encode()
        return Outcome(f"{len(captured['active'])} access key(s) of {captured['user']}: "
                       "Active → Inactive (" + ", ".join(captured["active"]) + ")",
                       {"deactivated": captured["active"]},
                       [Artifact(f"{captured['user']}-iam-user.json", record,
                                 "application/json")])

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        still = self._active(ctx)
        if still:
            raise VerificationFailed(f"still active: {', '.join(still)}")
        return "no active access key"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return f"reactivate the {len(captured.get('active', []))} key(s) that were active"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        iam = ctx.clients.client("iam")
        parallel(lambda key: iam.update_access_key(UserName=captured["user"], AccessKeyId=key,
                                                   Status="Active"), captured["active"])
        return Outcome(f"reactivated exactly the keys active before the cut: "
                       f"{', '.join(captured['active']) or 'none'}. Rotating them is the "
                       "better ending: new keys, the workload moved, these deleted")


class DeactivateUserCredentials(Action):
    """Signing certificates, SSH public keys (CodeCommit) and service-specific
    credentials (CodeCommit HTTPS, Keyspaces, Bedrock): each active one made inactive."""

    name = "deactivate-user-credentials"
    description = ("deactivate the user's signing certificates, SSH public keys and "
                   "service-specific credentials")
    permissions = ("iam:ListSigningCertificates", "iam:UpdateSigningCertificate",
                   "iam:ListSSHPublicKeys", "iam:UpdateSSHPublicKey",
                   "iam:ListServiceSpecificCredentials", "iam:UpdateServiceSpecificCredential")

    # A kind it could not list fails the step after the rest were cut: the release puts
    # back what it did change.
    partial_undo = True

    def _found(self, ctx: StepContext) -> dict[str, Any]:
        return credentials(ctx.clients.client("iam"), ctx.target.facts["user"],
                           ("certificates", "ssh_keys", "service_credentials"))

    def check(self, ctx: StepContext) -> bool:
        ctx.memo["found"] = found = self._found(ctx)
        return not found["unreadable"] and not _active(found)

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        found = ctx.memo.get("found") or self._found(ctx)
        return {"user": ctx.target.facts["user"], "active": _active(found),
                "unreadable": found["unreadable"]}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        self._set(ctx, captured, "Inactive")
        said = [f"{len(ids)} {LABELS[kind]} Active → Inactive"
                for kind, ids in captured["active"].items() if ids]
        unread = [f"{label} not listed ({why}) — check them in the console"
                  for label, why in captured["unreadable"].items()]
        return Outcome("; ".join(said + unread) or "no active certificate, SSH key or "
                       "service-specific credential", {"unreadable": captured["unreadable"]})

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        found = self._found(ctx)
        still = _active(found)
        if any(still.values()):
            raise VerificationFailed("still active: " + ", ".join(
                i for ids in still.values() for i in ids))
        if found["unreadable"]:
            raise VerificationFailed(outcome.summary + " — not verified: " + ", ".join(
                f"{label} could not be listed" for label in found["unreadable"]))
        return "none active"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return "reactivate the credentials that were active"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        self._set(ctx, captured, "Active")
        return Outcome("reactivated: " + (", ".join(
            i for ids in captured["active"].values() for i in ids) or "none"))

    @staticmethod
    def _set(ctx: StepContext, captured: dict[str, Any], status: str) -> None:
        iam, user = ctx.clients.client("iam"), captured["user"]
        calls = {
            "certificates": lambda i: iam.update_signing_certificate(
                UserName=user, CertificateId=i, Status=status),
            "ssh_keys": lambda i: iam.update_ssh_public_key(
                UserName=user, SSHPublicKeyId=i, Status=status),
            "service_credentials": lambda i: iam.update_service_specific_credential(
                UserName=user, ServiceSpecificCredentialId=i, Status=status),
        }
        work = [(kind, i) for kind, ids in captured["active"].items() for i in ids]
        try:
            parallel(lambda item: calls[item[0]](item[1]), work)
        except ClientError as exc:
            raise StepFailed(describe_error(exc).code, str(describe_error(exc))) from exc


def _active(found: dict[str, Any]) -> dict[str, list[str]]:
    return {kind: [i["id"] for i in found.get(kind) or [] if i["status"] == "Active"]
            for kind in ("certificates", "ssh_keys", "service_credentials")}
