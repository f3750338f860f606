"""The watch after a cut, with CloudTrail's LookupEvents answered by the fault layer in
front of moto (moto does not model it): what the contained key or instance did after
the cut goes into the thread grouped, once, one message a check; a region that cannot
be read is said once; the end says "quiet" or sums up; a release ends the watch."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete

from playbooks.models import Watch
from sandbox import world as sandbox_world
from sandbox.faulty_aws import FaultyAws
from sandbox.harness import RunningBot, wait_for
from tests.conftest import settle
from tests.test_keys import CHANNEL, approve, request

WATCH = "👁️ *Watch*"


class Trail:
    """CloudTrail's event history as LookupEvents answers it: events by lookup attribute,
    newest first, only those inside the asked time window."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.asked: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def add(self, name: str, who: dict[str, str], at: datetime, ip: str = "203.0.113.7",
            error: str = "", source: str = "s3.amazonaws.com", region: str = "us-east-1"
            ) -> None:
        detail = {"eventName": name, "eventSource": source, "awsRegion": region,
                  "sourceIPAddress": ip, "userAgent": "aws-cli/2.15.0",
                  "userIdentity": {"type": "IAMUser", "arn": "arn:aws:iam::123456789012:user/x"},
                  **({"errorCode": error} if error else {})}
        with self.lock:
            self.events.append({
                "EventId": f"ev-{len(self.events) + 1:04d}", "EventName": name,
                "EventTime": at.timestamp(), "EventSource": source,
                "Username": who.get("Username", ""), "match": who,
                "CloudTrailEvent": json.dumps(detail)})

    def reply(self, request: dict[str, Any]) -> dict[str, Any]:
        (attribute,) = request["LookupAttributes"]
        start = float(request["StartTime"])
        with self.lock:
            self.asked.append(request)
            found = [{k: v for k, v in e.items() if k != "match"} for e in self.events
                     if e["match"].get(attribute["AttributeKey"]) == attribute["AttributeValue"]
                     and start <= e["EventTime"]]
        return {"Events": sorted(found, key=lambda e: -e["EventTime"])}


def later(minutes: float) -> datetime:
    return datetime.now(UTC).replace(tzinfo=None) + timedelta(minutes=minutes)


def watch_messages(bot: RunningBot, card_ts: str) -> list[str]:
    return [m.text for m in bot.slack.fake.thread(CHANNEL, card_ts) if m.text.startswith(
        (WATCH, "⚠️ *Watch*"))]


def contained_key(bot: RunningBot, faulty: FaultyAws, key: str) -> tuple[Trail, Any, Any]:
    """The key contained, with CloudTrail's event history answering LookupEvents."""
    trail = Trail()
    faulty.answer("LookupEvents", trail.reply)
    card = request(bot, f"key {key} found in a public gist")
    return trail, card, approve(bot, card)


def test_what_a_contained_key_does_after_the_cut_is_reported_grouped_and_once(
        faulty_bot: RunningBot, faulty: FaultyAws, leaked: dict[str, str]) -> None:
    trail, card, incident = contained_key(faulty_bot, faulty, leaked["key"])
    assert incident.status == "contained" and incident.cut_at is not None
    watch = faulty_bot.deps.store.watch(incident.id)
    assert watch is not None and watch.subjects == [
        {"attribute": "AccessKeyId", "value": leaked["key"]}]
    assert watch.regions == ["us-east-1"] and watch.until == incident.cut_at + timedelta(
        minutes=30)
    key = {"AccessKeyId": leaked["key"]}
    cut = incident.cut_at.replace(tzinfo=UTC)
    trail.add("ListBuckets", key, cut - timedelta(minutes=5))  # before the cut: not reported
    trail.add("ListBuckets", key, cut + timedelta(seconds=1), error="InvalidClientTokenId")
    trail.add("ListBuckets", key, cut + timedelta(seconds=2), error="InvalidClientTokenId")
    trail.add("GetCallerIdentity", key, cut + timedelta(seconds=3), source="sts.amazonaws.com",
              ip="198.51.100.4")
    trail.add("GetObject", {"AccessKeyId": "AKIAOTHERKEY00000000"}, cut + timedelta(seconds=3))
    asked_before = len(trail.asked)

    # Four sweeps at once (replicas, or a slow sweep overlapping the next): one check.
    checked: list[int] = []
    first = later(0)
    sweeps = [threading.Thread(target=lambda: checked.append(faulty_bot.deps.watcher.sweep(first)))
              for _ in range(4)]
    for t in sweeps:
        t.start()
    for t in sweeps:
        t.join()
    assert sorted(checked) == [0, 0, 0, 1]
    settle(faulty_bot, incident.id)
    (found,) = watch_messages(faulty_bot, card.ts)
    assert "3 new CloudTrail events" in found and "(3 in all)" in found
    assert "2 × `ListBuckets` (s3.amazonaws.com) from 203.0.113.7" in found
    assert "`InvalidClientTokenId`" in found and "198.51.100.4" in found
    assert "GetObject" not in found
    # Asked from the cut, by the key, in the region (IAM's events are in us-east-1).
    (asked,) = trail.asked[asked_before:]
    assert asked["LookupAttributes"] == [{"AttributeKey": "AccessKeyId",
                                          "AttributeValue": leaked["key"]}]
    assert float(asked["StartTime"]) == cut.timestamp()

    # Not due again for a minute; a minute on, nothing new is nothing said.
    assert faulty_bot.deps.watcher.sweep() == 0
    # The scheduler's next sweep, a hair early: the check is due all the same.
    assert faulty_bot.deps.watcher.sweep(first + timedelta(seconds=59.5)) == 1
    assert len(watch_messages(faulty_bot, card.ts)) == 1
    # An event CloudTrail delivers late is reported when it lands, once.
    trail.add("CreateUser", key, cut + timedelta(seconds=4), source="iam.amazonaws.com",
              error="InvalidClientTokenId")
    faulty_bot.deps.watcher.sweep(later(2.2))
    settle(faulty_bot, incident.id)
    messages = watch_messages(faulty_bot, card.ts)
    assert len(messages) == 2 and "1 new CloudTrail event " in messages[1]
    assert "`CreateUser`" in messages[1] and "(4 in all)" in messages[1]
    # The end of the window: a summary, and the watch is over.
    faulty_bot.deps.watcher.sweep(later(31))
    settle(faulty_bot, incident.id)
    messages = watch_messages(faulty_bot, card.ts)
    assert len(messages) == 3 and "ended after 30 minutes: 4 CloudTrail events" in messages[2]
    done = faulty_bot.deps.store.watch(incident.id)
    assert done is not None and done.finished_at is not None and done.events == 4
    assert faulty_bot.deps.watcher.sweep(later(40)) == 0


def test_a_quiet_watch_says_so_and_a_region_it_cannot_read_is_said_once(
        faulty_bot: RunningBot, faulty: FaultyAws, world: sandbox_world.World) -> None:
    trail = Trail()
    faulty_bot.slack.command("U0DANA", CHANNEL, f"{world.instance_id} isolate reverse shell")
    card = wait_for(lambda: faulty_bot.slack.fake.channel_messages(CHANNEL))[0]
    incident = approve(faulty_bot, card)
    assert incident.status == "contained"
    watch = faulty_bot.deps.store.watch(incident.id)
    # An instance's role session is named after the instance.
    assert watch is not None and watch.subjects == [
        {"attribute": "Username", "value": world.instance_id}]
    faulty.add("LookupEvents", "refuse:AccessDeniedException", times=2)
    faulty.answer("LookupEvents", trail.reply)
    faulty_bot.deps.watcher.sweep()
    faulty_bot.deps.watcher.sweep(later(1.1))
    faulty_bot.deps.watcher.sweep(later(2.2))
    faulty_bot.deps.watcher.sweep(later(31))
    settle(faulty_bot, incident.id)
    messages = watch_messages(faulty_bot, card.ts)
    assert len(messages) == 2, messages
    assert "could not be read in full: us-east-1 `AccessDeniedException`" in messages[0]
    assert "quiet for 30 minutes" in messages[1] and world.instance_id in messages[1]


def test_a_check_that_died_is_taken_over_once_its_claim_lapses(
        faulty_bot: RunningBot, faulty: FaultyAws, leaked: dict[str, str]) -> None:
    """A replica claimed a check and died before recording it: nobody checks the watch
    while the claim holds; after it lapses one check is made, and said once."""
    trail, card, incident = contained_key(faulty_bot, faulty, leaked["key"])
    assert incident.cut_at is not None
    trail.add("ListBuckets", {"AccessKeyId": leaked["key"]},
              incident.cut_at.replace(tzinfo=UTC) + timedelta(seconds=1))
    (claimed,) = faulty_bot.deps.store.claim_due_watches()  # …and the process died here
    assert faulty_bot.deps.watcher.sweep(later(1)) == 0
    assert faulty_bot.deps.watcher.sweep(later(2.5)) == 1
    assert faulty_bot.deps.watcher.sweep(later(2.6)) == 0
    settle(faulty_bot, incident.id)
    (found,) = watch_messages(faulty_bot, card.ts)
    assert "1 new CloudTrail event " in found
    # The dead replica's late write is refused: its claim is no longer the watch's.
    assert not faulty_bot.deps.store.watch_checked(
        claimed, seen=["x"], found=5, errors={}, next_check_at=later(3), finished=True,
        messages=[("thread", {"text": "late"})])
    watch = faulty_bot.deps.store.watch(incident.id)
    assert watch is not None and watch.events == 1 and watch.finished_at is None


def test_a_containment_whose_watch_never_started_is_watched_from_the_next_sweep(
        faulty_bot: RunningBot, faulty: FaultyAws, leaked: dict[str, str]) -> None:
    """The process died after the run's end was written, before its watch was: the next
    sweep (any replica's) starts it."""
    trail, card, incident = contained_key(faulty_bot, faulty, leaked["key"])
    with faulty_bot.deps.store.session() as s:
        s.execute(delete(Watch).where(Watch.incident_id == incident.id))
    assert faulty_bot.deps.store.watch(incident.id) is None
    trail.add("ListBuckets", {"AccessKeyId": leaked["key"]},
              incident.cut_at.replace(tzinfo=UTC) + timedelta(seconds=1))
    assert faulty_bot.deps.watcher.sweep() == 1
    settle(faulty_bot, incident.id)
    assert faulty_bot.deps.store.watch(incident.id) is not None
    (found,) = watch_messages(faulty_bot, card.ts)
    assert "1 new CloudTrail event " in found


def test_a_released_containment_ends_its_watch(
        faulty_bot: RunningBot, faulty: FaultyAws, leaked: dict[str, str]) -> None:
    trail, card, incident = contained_key(faulty_bot, faulty, leaked["key"])
    faulty_bot.slack.command("U0DANA", CHANNEL, f"release {incident.id} false alarm")
    release_card = wait_for(lambda: faulty_bot.slack.fake.channel_messages(CHANNEL)[1:])[0]
    assert approve(faulty_bot, release_card).status == "released"
    asked = len(trail.asked)
    faulty_bot.deps.watcher.sweep()
    wait_for(lambda: not faulty_bot.deps.store.unsent())
    assert watch_messages(faulty_bot, card.ts) == [
        "👁️ *Watch* stopped: the containment was released (0 events seen)."]
    assert len(trail.asked) == asked  # nothing looked up for a released containment
