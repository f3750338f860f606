"""A compromised or exposed S3 bucket: its prior state recorded (an evidence file), then
every Block Public Access setting on, its ACL private and ACLs disabled (bucket owner
enforced), and a bucket policy that denies everyone but an allow-list. A release puts
each recorded value back and reads it back, or says which it could not.

What real AWS does that the tests on moto cannot show:
- S3 refuses `BucketOwnerEnforced` while the bucket's ACL grants access outside the
  account (`InvalidBucketAclWithObjectOwnership`): the ACL is reset to private first,
  its grants recorded for the release. moto accepts either order.
- The deny policy is evaluated by S3 (`aws:PrincipalArn` against the allow-list); moto
  stores it and evaluates nothing. A principal in the allow-list is matched by its role
  ARN even when it acts through an assumed-role session.
- Changes to bucket policies and Block Public Access take effect within seconds, but S3
  is eventually consistent: a request in flight may still pass.
- Objects uploaded with their own ACLs keep them until ownership is enforced; once it
  is, S3 ignores every ACL and the bucket owner owns every object.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from botocore.exceptions import ClientError

from handlers.base import Action, Artifact, Outcome, StepContext, StepFailed, VerificationFailed
from handlers.retry import describe_error

LOOKUP_PERMISSIONS = ("sts:GetCallerIdentity", "s3:GetBucketPolicy",
                      "s3:GetBucketPublicAccessBlock", "s3:GetBucketOwnershipControls",
                      "s3:GetBucketAcl", "s3:GetBucketWebsite", "s3:GetReplicationConfiguration",
                      "s3:GetBucketLocation")
ALL_BLOCKED = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
               "RestrictPublicBuckets": True}
SID = "CordonContainment"
# An absent configuration (no policy, no Public Access Block…): S3's error codes.
ABSENT = {"NoSuchBucketPolicy", "NoSuchPublicAccessBlockConfiguration",
          "OwnershipControlsNotFoundError", "NoSuchWebsiteConfiguration",
          "ReplicationConfigurationNotFoundError"}


class BucketNotFound(Exception):
    pass


def _read(call: Any, key: str | None = None) -> Any:
    """A bucket setting, or None when the bucket has none."""
    try:
        answer = call()
    except ClientError as exc:
        if describe_error(exc).code in ABSENT:
            return None
        raise
    return answer.get(key) if key else answer


def prior_state(s3: Any, bucket: str) -> dict[str, Any]:
    """Everything a containment changes, and what it does not but a responder must know
    (website hosting, replication), as S3 returns it."""
    try:
        acl = s3.get_bucket_acl(Bucket=bucket)
    except ClientError as exc:
        if describe_error(exc).code == "NoSuchBucket":
            raise BucketNotFound(f"no S3 bucket {bucket}") from exc
        raise
    policy = _read(lambda: s3.get_bucket_policy(Bucket=bucket), "Policy")
    return {
        "policy": json.loads(policy) if policy else None,
        "public_access_block": _read(lambda: s3.get_public_access_block(Bucket=bucket),
                                     "PublicAccessBlockConfiguration"),
        "ownership": _read(lambda: s3.get_bucket_ownership_controls(Bucket=bucket),
                           "OwnershipControls"),
        "acl": {"Owner": acl["Owner"], "Grants": acl.get("Grants", [])},
        "website": _read(lambda: s3.get_bucket_website(Bucket=bucket)) is not None,
        "replication": _read(lambda: s3.get_bucket_replication(Bucket=bucket)) is not None,
    }


def plan_lines(state: dict[str, Any], allowed: list[str]) -> list[str]:
    pab = state.get("public_access_block") or {}
    on = sum(1 for k in ALL_BLOCKED if pab.get(k))
    ownership = ((state.get("ownership") or {}).get("Rules") or [{}])[0].get(
        "ObjectOwnership", "none")
    others = [g for g in (state.get("acl") or {}).get("Grants", [])
              if g.get("Grantee", {}).get("ID") != state["acl"]["Owner"].get("ID")]
    return [
        f"Block Public Access: {on} of 4 on → all 4 on",
        f"bucket ACL: {len(others)} grant(s) beyond the owner → private (recorded)",
        f"object ownership: {ownership} → BucketOwnerEnforced (ACLs off)",
        "bucket policy: " + (f"{len(state['policy'].get('Statement', []))} statement(s)"
                             if state.get("policy") else "none")
        + f" → the same, plus a deny of s3:* to everyone but {len(allowed)} allowed "
          "principal(s)",
    ]


def deny_policy(bucket: str, partition: str, allowed: list[str],
                prior: dict[str, Any] | None) -> dict[str, Any]:
    """The prior policy's statements (an explicit deny wins over them) and Cordon's."""
    statements = [st for st in (prior or {}).get("Statement", []) if st.get("Sid") != SID]
    statements.append({
        "Sid": SID, "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [f"arn:{partition}:s3:::{bucket}", f"arn:{partition}:s3:::{bucket}/*"],
        "Condition": {"ArnNotLike": {"aws:PrincipalArn": allowed}}})
    return {"Version": "2012-10-17", "Statement": statements}


def role_of(caller_arn: str) -> str:
    """The role ARN of an assumed-role session ARN (the ARN a policy names); any other
    principal's ARN as it is."""
    head, _, rest = caller_arn.partition(":assumed-role/")
    if not rest:
        return caller_arn
    return f"{head.replace(':sts:', ':iam:')}:role/{rest.split('/')[0]}"


class SealBucket(Action):
    """One step, in the order S3 needs: Block Public Access, the ACL private, ownership
    enforced, the deny policy. Its undo puts each back (see `undo` for the order)."""

    name = "seal-bucket"
    description = ("record the bucket's policy, Public Access Block, ownership and ACL; "
                   "then all 4 Block Public Access settings on, the ACL private, ACLs off, "
                   "and a policy denying everyone but the allow-list")
    permissions = ("s3:GetBucketPolicy", "s3:PutBucketPolicy", "s3:DeleteBucketPolicy",
                   "s3:GetBucketPublicAccessBlock", "s3:PutBucketPublicAccessBlock",
                   "s3:GetBucketOwnershipControls", "s3:PutBucketOwnershipControls",
                   "s3:GetBucketAcl", "s3:PutBucketAcl", "s3:GetBucketWebsite",
                   "s3:GetReplicationConfiguration")
    # A failure part-way leaves part of the change: the release puts back what it can.
    partial_undo = True

    def _s3(self, ctx: StepContext) -> Any:
        return ctx.clients.client("s3")

    def check(self, ctx: StepContext) -> bool:
        return False  # the allow-list may have changed: the policy is always rewritten

    def capture(self, ctx: StepContext) -> dict[str, Any]:
        bucket = ctx.target.facts["bucket"]
        return {"bucket": bucket, "state": prior_state(self._s3(ctx), bucket)}

    def apply(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        s3, bucket, state = self._s3(ctx), captured["bucket"], captured["state"]
        # The allow-list the card showed the approver: CORDON_BREAK_GLASS_ARNS and the
        # role Cordon acts as in the bucket's account.
        allowed = list(ctx.target.facts["allowed"])
        partition = ctx.target.facts.get("partition", "aws")
        policy = deny_policy(bucket, partition, allowed, state["policy"])
        done: list[str] = []
        try:
            s3.put_public_access_block(Bucket=bucket,
                                       PublicAccessBlockConfiguration=ALL_BLOCKED)
            done.append("Block Public Access all on")
            s3.put_bucket_acl(Bucket=bucket, ACL="private")
            done.append("ACL private")
            s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={
                "Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]})
            done.append("ACLs off (bucket owner enforced)")
            s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
            done.append("deny policy")
        except ClientError as exc:
            error = describe_error(exc)
            raise StepFailed(error.code, error.message,
                             done=", ".join(done) or "nothing changed") from exc
        record = json.dumps({"bucket": bucket, **state}, indent=2, sort_keys=True,
                            default=str).encode()
        digest = hashlib.sha256(record).hexdigest()
        return Outcome(
            f"{bucket}: " + ", ".join(done) + f"; allowed: {', '.join(allowed)}. Prior state "
            f"recorded (SHA-256 {digest[:16]}…)",
            {"policy": policy, "allowed": allowed, "prior_sha256": digest},
            [Artifact(f"{bucket}-prior-state.json", record, "application/json")])

    def verify(self, ctx: StepContext, captured: dict[str, Any], outcome: Outcome) -> str:
        s3, bucket = self._s3(ctx), captured["bucket"]
        now = prior_state(s3, bucket)
        wrong = []
        if now["public_access_block"] != ALL_BLOCKED:
            wrong.append("Block Public Access")
        if ((now["ownership"] or {}).get("Rules") or [{}])[0].get(
                "ObjectOwnership") != "BucketOwnerEnforced":
            wrong.append("object ownership")
        if now["policy"] != outcome.details["policy"]:
            wrong.append("bucket policy")
        if wrong:
            raise VerificationFailed("not in place: " + ", ".join(wrong))
        return "Block Public Access all on, ACLs off, deny policy in place"

    def describe_undo(self, captured: dict[str, Any]) -> str:
        return f"put back {captured.get('bucket')}'s recorded policy, ownership, ACL and " \
               "Block Public Access"

    def undo(self, ctx: StepContext, captured: dict[str, Any]) -> Outcome:
        """The policy first, then ownership (ACLs on again), the ACL, Block Public Access;
        each value read back and compared. What could not be put back is named, and the
        rest is still put back."""
        s3, bucket, state = self._s3(ctx), captured["bucket"], captured["state"]
        failed: list[str] = []

        def step(label: str, put: Any, check: Any) -> None:
            try:
                put()
                if not check(prior_state(s3, bucket)):
                    failed.append(f"{label} (read back different)")
            except ClientError as exc:
                failed.append(f"{label} ({describe_error(exc).code})")

        step("bucket policy",
             lambda: (s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(state["policy"]))
                      if state["policy"] else s3.delete_bucket_policy(Bucket=bucket)),
             lambda now: now["policy"] == state["policy"])
        step("object ownership",
             lambda: (s3.put_bucket_ownership_controls(Bucket=bucket,
                                                       OwnershipControls=state["ownership"])
                      if state["ownership"] else s3.delete_bucket_ownership_controls(
                          Bucket=bucket)),
             lambda now: now["ownership"] == state["ownership"])
        # While BlockPublicAcls is on, S3 refuses an ACL with public grants (moto does
        # not): it is lifted for the ACL's put, then the recorded settings come back —
        # which may hold BlockPublicAcls on beside a public ACL set before it.
        step("ACL", lambda: (
            s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
                **ALL_BLOCKED, "BlockPublicAcls": False}),
            s3.put_bucket_acl(Bucket=bucket, AccessControlPolicy=state["acl"])),
             lambda now: _grants(now["acl"]) == _grants(state["acl"]))
        step("Block Public Access",
             lambda: (s3.put_public_access_block(
                 Bucket=bucket, PublicAccessBlockConfiguration=state["public_access_block"])
                 if state["public_access_block"]
                 else s3.delete_public_access_block(Bucket=bucket)),
             lambda now: now["public_access_block"] == state["public_access_block"])
        if failed:
            raise StepFailed("NotRestored", "could not put back: " + "; ".join(failed),
                             done="the rest put back as recorded")
        return Outcome(f"{bucket}: policy, ownership, ACL and Block Public Access put back "
                       "as recorded (each read back equal)")


def _grants(acl: dict[str, Any]) -> list[str]:
    return sorted(json.dumps(g, sort_keys=True) for g in acl.get("Grants", []))
