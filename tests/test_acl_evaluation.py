"""Network ACLs evaluated as AWS evaluates them: per direction and address family, in
rule-number order, the lowest matching rule decides. Hand-made ACLs, no AWS."""

from __future__ import annotations

from typing import Any

from handlers.network_acl import isolates, reachable_allows


def entry(rule: int, action: str, egress: bool = False, v4: str | None = None,
          v6: str | None = None, protocol: str = "-1") -> dict[str, Any]:
    e: dict[str, Any] = {"RuleNumber": rule, "RuleAction": action, "Egress": egress,
                         "Protocol": protocol}
    if v4:
        e["CidrBlock"] = v4
    if v6:
        e["Ipv6CidrBlock"] = v6
    return e


def acl(*entries: dict[str, Any]) -> dict[str, Any]:
    defaults = [entry(32767, "deny", eg, v4="0.0.0.0/0") for eg in (False, True)]
    return {"NetworkAclId": "acl-test", "Entries": [*entries, *defaults]}


def deny_all(first: int = 1) -> list[dict[str, Any]]:
    return [entry(first, "deny", eg, v4="0.0.0.0/0") for eg in (False, True)] + [
        entry(first + 1, "deny", eg, v6="::/0") for eg in (False, True)]


def test_a_deny_of_everything_first_isolates() -> None:
    assert isolates(acl(*deny_all(), entry(100, "allow", v4="0.0.0.0/0")))


def test_an_allow_numbered_before_the_deny_still_lets_traffic_through() -> None:
    leaky = acl(entry(1, "allow", v4="10.0.0.0/8"), *deny_all(first=2))
    assert not isolates(leaky)
    assert [e["CidrBlock"] for e in reachable_allows(leaky)] == ["10.0.0.0/8"]


def test_a_narrow_deny_does_not_stop_the_allows_after_it() -> None:
    narrow = acl(entry(1, "deny", v4="0.0.0.0/0", protocol="6"),  # TCP only
                 entry(2, "allow", v4="0.0.0.0/0"))
    assert not isolates(narrow)


def test_ipv6_is_evaluated_on_its_own() -> None:
    v4_only = acl(*[entry(1, "deny", eg, v4="0.0.0.0/0") for eg in (False, True)],
                  entry(50, "allow", v6="::/0"))
    assert not isolates(v4_only)
    assert isolates(acl(*deny_all(), entry(50, "allow", v6="::/0")))


def test_each_direction_counts() -> None:
    ingress_only = acl(entry(1, "deny", False, v4="0.0.0.0/0"),
                       entry(10, "allow", True, v4="0.0.0.0/0"))
    assert [e["Egress"] for e in reachable_allows(ingress_only)] == [True]


def test_an_acl_with_no_allow_at_all_isolates() -> None:
    assert isolates(acl())
