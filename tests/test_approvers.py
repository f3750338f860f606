"""Approvers: user IDs and user groups, the groups' members cached for a minute."""

from __future__ import annotations

from slack_sdk import WebClient

from bot.approvers import ApproverPolicy, MembershipUnavailable
from sandbox.fake_slack import FakeSlack


def test_group_members_are_cached_for_the_ttl(fake_slack: FakeSlack) -> None:
    now = [1000.0]
    client = WebClient(token="xoxb-test", base_url=fake_slack.api_url)
    policy = ApproverPolicy(["S0ONCALL", "U0ALEX"], client, cache_ttl=60, clock=lambda: now[0])
    assert policy.is_approver("U0ALEX")
    assert policy.is_approver("U0LEE") and not policy.is_approver("U0SAM")
    assert len(fake_slack.calls_to("usergroups.users.list")) == 1
    fake_slack.usergroups["S0ONCALL"] = ["U0SAM"]  # the rota changes
    now[0] += 59
    assert policy.is_approver("U0LEE")
    now[0] += 2
    assert policy.is_approver("U0SAM") and not policy.is_approver("U0LEE")
    assert len(fake_slack.calls_to("usergroups.users.list")) == 2


def test_an_unreadable_group_refuses_rather_than_guesses(fake_slack: FakeSlack) -> None:
    client = WebClient(token="xoxb-test", base_url=fake_slack.api_url)
    policy = ApproverPolicy(["S0GONE"], client)
    try:
        policy.is_approver("U0LEE")
    except MembershipUnavailable as exc:
        assert "no_such_subteam" in str(exc)
    else:
        raise AssertionError("membership of an unknown group was assumed")
