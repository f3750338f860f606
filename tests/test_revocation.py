"""Revocations on a role: one Cordon policy, a statement per instance, pruned when every
token it could hit has expired, and a clear refusal when IAM's size limit would be
passed. moto evaluates no condition: these tests check the documents themselves."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from handlers import revocation

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def statement(instance: str, cutoff: datetime) -> dict[str, object]:
    return revocation.instance_statement(
        instance, f"arn:aws:ec2:us-east-1:123456789012:instance/{instance}", cutoff)


def test_each_instance_has_its_statement_in_one_policy() -> None:
    doc = revocation.merged(None, "i-0aaa", statement("i-0aaa", NOW), NOW)
    doc = revocation.merged(doc, "i-0bbb", statement("i-0bbb", NOW), NOW)
    assert [s["Sid"][:17] for s in doc["Statement"]] == ["CordonRevokei0aaa",
                                                         "CordonRevokei0bbb"]
    # Its cut-off and the end of its usefulness (cut-off + 12 h) are in the statement.
    first = doc["Statement"][0]
    assert first["Condition"]["DateLessThan"]["aws:TokenIssueTime"] == "2026-11-27T12:00:00Z"
    assert revocation.until_in(first) == NOW + timedelta(hours=12)


def test_a_new_containment_of_the_same_instance_replaces_its_statement() -> None:
    doc = revocation.merged(None, "i-0aaa", statement("i-0aaa", NOW), NOW)
    later = NOW + timedelta(hours=1)
    doc = revocation.merged(doc, "i-0aaa", statement("i-0aaa", later), later)
    (only,) = doc["Statement"]
    assert only["Condition"]["DateLessThan"]["aws:TokenIssueTime"] == "2026-11-27T13:00:00Z"


def test_statements_whose_tokens_all_expired_are_pruned() -> None:
    doc = revocation.merged(None, "i-0aaa", statement("i-0aaa", NOW), NOW)
    doc["Statement"].append({"Sid": "SomeoneElses", "Effect": "Deny", "Action": "s3:*",
                             "Resource": "*"})
    after = NOW + timedelta(hours=12, minutes=1)
    doc = revocation.merged(doc, "i-0bbb", statement("i-0bbb", after), after)
    assert [s["Sid"][:17] for s in doc["Statement"]] == ["SomeoneElses", "CordonRevokei0bbb"]


def test_many_incidents_fit_and_too_many_fail_clearly() -> None:
    doc = None
    for n in range(30):
        doc = revocation.merged(doc, f"i-{n:017x}", statement(f"i-{n:017x}", NOW), NOW)
    assert doc is not None and len(doc["Statement"]) == 30
    assert len(json.dumps(doc, separators=(",", ":"))) <= revocation.ROLE_INLINE_LIMIT
    with pytest.raises(revocation.PolicyTooLarge, match="do not fit"):
        for n in range(30, 80):
            doc = revocation.merged(doc, f"i-{n:017x}", statement(f"i-{n:017x}", NOW), NOW)


def test_lifetimes_are_the_longest_a_token_of_each_kind_can_have() -> None:
    assert revocation.until_of("user", NOW) - NOW == timedelta(hours=36)
    assert revocation.until_of("role", NOW) - NOW == timedelta(hours=12)
    assert revocation.until_of("instance", NOW) - NOW == timedelta(hours=12)
