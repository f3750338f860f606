"""ARNs carry the partition of their region: `aws`, `aws-cn` (Beijing, Ningxia) or
`aws-us-gov` (GovCloud). A deny whose condition names `arn:aws:…` never matches a
request in another partition, so every ARN Cordon writes is built here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Region prefixes of the partitions other than `aws` (botocore's endpoints.json).
_PARTITIONS = (("us-gov-", "aws-us-gov"), ("cn-", "aws-cn"), ("us-isob-", "aws-iso-b"),
               ("us-iso-", "aws-iso"), ("eu-isoe-", "aws-iso-e"), ("us-isof-", "aws-iso-f"))


def partition(region: str) -> str:
    """>>> partition("cn-north-1"), partition("us-gov-west-1"), partition("eu-west-1")
    ('aws-cn', 'aws-us-gov', 'aws')"""
    return next((name for prefix, name in _PARTITIONS if region.startswith(prefix)), "aws")


def instance_arn(region: str, account: str, instance_id: str) -> str:
    return f"arn:{partition(region)}:ec2:{region}:{account}:instance/{instance_id}"


def iam_arn(region: str, account: str, kind: str, name: str) -> str:
    """A role's or user's ARN (IAM is global within its partition)."""
    return f"arn:{partition(region)}:iam::{account}:{kind}/{name}"


def rewrite_arns(document: Any, rewrite: Callable[[str], Any]) -> Any:
    """A policy document with every `arn:aws:…` string replaced by `rewrite(rest)`."""
    if isinstance(document, dict):
        return {k: rewrite_arns(v, rewrite) for k, v in document.items()}
    if isinstance(document, list):
        return [rewrite_arns(v, rewrite) for v in document]
    if isinstance(document, str) and document.startswith("arn:aws:"):
        return rewrite(document[len("arn:aws:"):])
    return document


def in_partition(document: Any, partition_name: str) -> Any:
    """A policy document whose resources name another partition
    (`python -m bot policy --partition aws-us-gov`)."""
    return rewrite_arns(document, lambda rest: f"arn:{partition_name}:{rest}")
