"""Leaked access keys, end to end through the real HTTP endpoint against moto's
server, and the CloudTrail review's parsing and ranking with botocore's Stubber (moto
does not implement LookupEvents: its server answers 500). moto stores policies but
does not evaluate conditions: the tests assert on the stored documents and key status."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from handlers import access_keys, cloudtrail
from handlers.aws import Clients
from handlers.retry import Backoff
from playbooks.models import Incident
from sandbox.fake_slack import FakeSlack, Message
from sandbox.harness import RunningBot, wait_for
from tests.conftest import aws_client, settle_card

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"


def iam() -> Any:
    return aws_client("iam")


def key_status(user: str, key: str) -> str:
    keys = iam().list_access_keys(UserName=user)["AccessKeyMetadata"]
    return str(next(k["Status"] for k in keys if k["AccessKeyId"] == key))


def request(bot: RunningBot, text: str) -> Message:
    before = len(bot.slack.fake.channel_messages(CHANNEL))
    bot.slack.command(DANA, CHANNEL, text)
    return wait_for(lambda: bot.slack.fake.channel_messages(CHANNEL)[before:])[0]  # type: ignore[no-any-return]


def approve(bot: RunningBot, card: Message) -> Incident:
    bot.slack.click_button(LEE, CHANNEL, card.ts, "Approve")
    return settle_card(bot, card.ts)  # type: ignore[no-any-return]


def thread(fake: FakeSlack, card: Message) -> list[str]:
    return [m.text for m in fake.thread(CHANNEL, card.ts)]


def test_the_card_shows_the_owner_and_what_the_key_can_do(
        bot: RunningBot, leaked: dict[str, str]) -> None:
    card = request(bot, f"key {leaked['key']} found in a public gist")
    text = json.dumps(card.blocks)
    for expected in (leaked["key"], "deploy-bot", "123456789012", "Active", "0 days old",
                     leaked["other"], "*Console access*\\nyes", "deploy", "ecr-push",
                     "never", "found in a public gist", "deactivate-access-key"):
        assert expected in text, expected


def test_an_unknown_or_malformed_key_gets_a_clear_answer_and_no_card(
        bot: RunningBot, world: Any, fake_slack: FakeSlack) -> None:
    bot.slack.command(DANA, CHANNEL, "key AKIAZZZZZZZZZZZZZZZZ leaked")
    assert "no access key AKIAZZZZZZZZZZZZZZZZ" in wait_for(
        lambda: fake_slack.ephemerals_for(DANA))[0]
    status, body = bot.slack.command(DANA, CHANNEL, "key AKIA123 leaked")
    assert status == 200 and "AKIA` or `ASIA` and 16" in body
    assert fake_slack.channel_messages(CHANNEL) == [] and bot.deps.store.recent() == []


def test_approval_deactivates_the_key_and_revokes_its_sessions(
        bot: RunningBot, leaked: dict[str, str], fake_slack: FakeSlack) -> None:
    card = request(bot, f"key {leaked['key']} found in a public gist")
    incident = approve(bot, card)
    assert incident.status == "contained", incident.summary
    assert key_status(leaked["user"], leaked["key"]) == "Inactive"  # deactivated, not deleted
    assert key_status(leaked["user"], leaked["other"]) == "Active"
    doc = iam().get_user_policy(UserName="deploy-bot", PolicyName="cordon-revoke-sessions")
    statement = doc["PolicyDocument"]["Statement"][0]
    assert statement["Effect"] == "Deny" and statement["Action"] == "*"
    assert "aws:TokenIssueTime" in statement["Condition"]["DateLessThan"]
    assert iam().get_login_profile(UserName="deploy-bot")  # console left alone
    replies = thread(fake_slack, card)
    assert any(r.startswith("✅ *disable-console* — not asked") for r in replies)
    review = next(r for r in replies if "*review-activity*" in r)
    assert "activity review unavailable" in review  # moto has no LookupEvents
    others = next(r for r in replies if "*list-other-keys*" in r)
    assert leaked["other"] in others and "rotate" in others


def test_console_off_and_release(bot: RunningBot, leaked: dict[str, str],
                                 fake_slack: FakeSlack) -> None:
    card = request(bot, f"key {leaked['key']} console=off pasted in a ticket")
    assert "will be disabled (console=off)" in json.dumps(card.blocks)
    incident = approve(bot, card)
    assert incident.status == "contained", incident.summary
    with pytest.raises(ClientError, match="NoSuchEntity"):
        iam().get_login_profile(UserName="deploy-bot")
    release_card = request(bot, f"release {leaked['key']} rotated elsewhere")
    released = approve(bot, release_card)
    assert released.status == "released", released.summary
    assert key_status(leaked["user"], leaked["key"]) == "Active"
    # The sessions minted from the key before the containment stay revoked: a release
    # must not bring back to life what an attacker may hold (36 h for GetSessionToken).
    assert "cordon-revoke-sessions" in iam().list_user_policies(
        UserName="deploy-bot")["PolicyNames"]
    (kept,) = bot.deps.store.revocations(incident.id)
    assert kept.kind == "user" and kept.principal == "deploy-bot"
    assert (kept.remove_after - incident.decided_at).total_seconds() > 35 * 3600  # type: ignore[operator]
    assert bot.deps.cordon.expire_revocations(kept.remove_after - timedelta(minutes=1)) == []
    assert len(bot.deps.cordon.expire_revocations(kept.remove_after)) == 1
    assert "cordon-revoke-sessions" not in iam().list_user_policies(
        UserName="deploy-bot")["PolicyNames"]
    replies = " ".join(thread(fake_slack, release_card))
    assert "kept on deploy-bot until" in replies
    assert "A rotated key is the better ending" in replies
    assert "re-create it" in replies  # the console password cannot come back by itself


def test_a_temporary_key_offers_the_role_wide_revocation(
        bot: RunningBot, world: Any, fake_slack: FakeSlack) -> None:
    sts = aws_client("sts")
    role_arn = "arn:aws:iam::123456789012:role/web-prod"
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="leaked-session")["Credentials"]
    key = creds["AccessKeyId"]
    assert key.startswith("ASIA")
    # CloudTrail (not modelled by moto) cannot name the role: the bot says what to type.
    bot.slack.command(DANA, CHANNEL, f"key {key} seen in logs")
    reply = wait_for(lambda: fake_slack.ephemerals_for(DANA))[0]
    assert "cannot be deactivated" in reply and "role=NAME" in reply
    card = request(bot, f"key {key} role=web-prod seen in logs")
    text = json.dumps(card.blocks)
    assert "cannot be deactivated" in text and "legitimate ones too" in text
    incident = approve(bot, card)
    assert incident.playbook == "key-temporary" and incident.status == "contained"
    doc = iam().get_role_policy(RoleName="web-prod", PolicyName="AWSRevokeOlderSessions")
    assert "aws:TokenIssueTime" in json.dumps(doc["PolicyDocument"])


def _event(name: str, minutes_ago: int, ip: str, role: str | None = None) -> dict[str, Any]:
    detail: dict[str, Any] = {"eventName": name, "sourceIPAddress": ip,
                              "awsRegion": "eu-west-1", "userIdentity": {"type": "IAMUser"}}
    if role:
        detail["userIdentity"] = {"type": "AssumedRole", "sessionContext": {
            "sessionIssuer": {"type": "Role", "arn": role}}}
    return {"EventId": f"id-{name}-{minutes_ago}", "EventName": name,
            "EventTime": datetime.now(UTC) - timedelta(minutes=minutes_ago),
            "EventSource": "iam.amazonaws.com", "CloudTrailEvent": json.dumps(detail)}


def _stubbed(events: list[dict[str, Any]], **by_region: list[Any]
             ) -> tuple[Clients, dict[str, Stubber]]:
    """Clients whose CloudTrail answers from botocore's Stubber: `events` in us-east-1,
    and per other region a list of pages (a list of events) or error codes (str)."""
    session = boto3.session.Session(region_name="us-east-1", aws_access_key_id="x",
                                    aws_secret_access_key="y")
    clients = Clients(region="us-east-1", session=session)
    stubs = {}
    for region, pages in {"us-east-1": [events], **by_region}.items():
        trail = session.client("cloudtrail", region_name=region,
                               endpoint_url=f"https://ct.{region}")
        stub = Stubber(trail)
        for n, page in enumerate(pages):
            if isinstance(page, str):
                stub.add_client_error("lookup_events", service_error_code=page,
                                      http_status_code=400)
            else:
                more = {"NextToken": f"t{n}"} if n + 1 < len(pages) else {}
                stub.add_response("lookup_events", {"Events": page, **more})
        stub.activate()
        clients.in_region(region)._made["cloudtrail"] = trail
        stubs[region] = stub
    return clients, stubs


def test_activity_review_puts_persistence_and_escalation_first() -> None:
    events = [_event("GetObject", 5, "198.51.100.1"), _event("ListBuckets", 50, "198.51.100.1"),
              _event("CreateAccessKey", 30, "203.0.113.9"),
              _event("AttachUserPolicy", 10, "203.0.113.9"),
              _event("RunInstances", 20, "203.0.113.9")]
    clients, stubs = _stubbed(events)
    rows = access_keys.rank_events(access_keys.lookup_events(clients, "AKIAEXAMPLE", 7).events)
    stubs["us-east-1"].assert_no_pending_responses()
    assert [r["name"] for r in rows] == ["AttachUserPolicy", "RunInstances", "CreateAccessKey",
                                         "GetObject", "ListBuckets"]
    summary = access_keys.summarise_events(rows)
    assert summary.startswith("5 events, 3 suggesting persistence or escalation")
    first = summary.splitlines()[1]
    assert first.startswith("⚠️ ") and "AttachUserPolicy from 203.0.113.9 in eu-west-1" in first


def test_the_role_of_a_temporary_key_comes_from_cloudtrail() -> None:
    clients, _ = _stubbed([_event("GetCallerIdentity", 3, "192.0.2.5",
                                  role="arn:aws:iam::123456789012:role/ci-runner")])
    assert access_keys.role_of_temporary_key(clients, "ASIAEXAMPLE", 7) == "ci-runner"


def test_the_review_reads_us_east_1_and_every_region_and_keeps_partial_results(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """IAM events (the persistence a key makes) are in us-east-1; each configured region
    is read too, at most 2 requests a second; a throttle keeps what was read and says so."""
    monkeypatch.setattr(cloudtrail, "LOOKUP_INTERVAL", 0.01)
    monkeypatch.setattr(cloudtrail, "LOOKUP_RETRY", Backoff(attempts=2, base=0.01, cap=0.01))
    clients, stubs = _stubbed(
        [_event("CreateAccessKey", 30, "203.0.113.9")],
        **{"eu-west-1": [[_event("RunInstances", 20, "203.0.113.9")],
                         [_event("GetObject", 5, "198.51.100.1")]],
           "ap-south-1": [[_event("ListBuckets", 50, "198.51.100.1")],
                          "ThrottlingException", "ThrottlingException"]})
    found = access_keys.lookup_events(clients, "AKIAEXAMPLE", 7, ["eu-west-1", "ap-south-1"])
    for stub in stubs.values():
        stub.assert_no_pending_responses()
    assert found.regions == ["us-east-1", "eu-west-1", "ap-south-1"]
    assert sorted(e["EventName"] for e in found.events) == [
        "CreateAccessKey", "GetObject", "ListBuckets", "RunInstances"]
    assert found.partial == {"ap-south-1": "stopped after 1 page(s): ThrottlingException"}


def test_the_review_stops_at_its_page_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cloudtrail, "LOOKUP_INTERVAL", 0.0)
    monkeypatch.setattr(cloudtrail, "MAX_PAGES", 2)
    clients, _ = _stubbed([_event("GetObject", 1, "198.51.100.1")],
                          **{"eu-west-1": [[_event(f"Get{n}", n, "192.0.2.1")]
                                           for n in range(2)] + [[]]})
    found = access_keys.lookup_events(clients, "AKIAEXAMPLE", 7, ["eu-west-1"])
    assert found.partial == {"eu-west-1": "only the newest 2 pages read"}
    assert len(found.events) == 3


def test_the_role_of_a_temporary_key_needs_only_the_first_event_naming_it() -> None:
    role = "arn:aws:iam::123456789012:role/ci-runner"
    # Two pages are offered; the first names the role, so the second is never read.
    clients, stubs = _stubbed([_event("GetCallerIdentity", 3, "192.0.2.5", role=role)],
                              **{"eu-west-1": [[_event("GetObject", 1, "192.0.2.5", role=role)],
                                               [_event("PutObject", 2, "192.0.2.5")]]})
    assert access_keys.role_of_temporary_key(clients, "ASIAEXAMPLE", 7,
                                             ["eu-west-1"]) == "ci-runner"
    with pytest.raises(AssertionError):
        stubs["eu-west-1"].assert_no_pending_responses()  # page two was left unread
