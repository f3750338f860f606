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


def test_the_size_limit_counts_the_roles_other_inline_policies() -> None:
    doc = revocation.merged(None, "i-0aaa", statement("i-0aaa", NOW), NOW)
    size = revocation.policy_size(doc)
    revocation.merged(None, "i-0aaa", statement("i-0aaa", NOW), NOW,
                      others=revocation.ROLE_INLINE_LIMIT - size)
    with pytest.raises(revocation.PolicyTooLarge, match="other inline policies"):
        revocation.merged(None, "i-0aaa", statement("i-0aaa", NOW), NOW,
                          others=revocation.ROLE_INLINE_LIMIT - size + 1)


def test_an_instance_arn_carries_its_regions_partition() -> None:
    from handlers.arns import iam_arn, instance_arn

    assert instance_arn("cn-north-1", "123456789012", "i-0aaa") == (
        "arn:aws-cn:ec2:cn-north-1:123456789012:instance/i-0aaa")
    assert instance_arn("us-gov-west-1", "123456789012", "i-0aaa").startswith("arn:aws-us-gov:")
    assert iam_arn("eu-west-1", "123456789012", "role", "web") == (
        "arn:aws:iam::123456789012:role/web")
    # The shipped policy too (`python -m bot policy --partition aws-us-gov`).
    from playbooks.operations import iam_policy

    gov = json.dumps(iam_policy(partition="aws-us-gov"))
    assert '"arn:aws:' not in gov and '"arn:aws-us-gov:ec2:*:*:instance/*"' in gov


def test_the_principal_lock_spans_replicas(database_url: str) -> None:
    """Two stores on one database (two replicas): the second waits for the first."""
    import threading
    import time

    from playbooks.store import Store

    first, second = Store.from_url(database_url), Store.from_url(database_url)
    if first.engine.dialect.name != "postgresql":
        second = first  # SQLite serves one process: its lock is the process's
    order: list[str] = []
    inside = threading.Event()

    def hold() -> None:
        with first.principal_lock("arn:aws:iam::123456789012:role/web"):
            inside.set()
            time.sleep(0.3)
            order.append("first out")

    holder = threading.Thread(target=hold)
    holder.start()
    inside.wait(10)
    with second.principal_lock("arn:aws:iam::123456789012:role/web"):
        order.append("second in")
    holder.join()
    assert order == ["first out", "second in"]
    first.engine.dispose()
    second.engine.dispose()
