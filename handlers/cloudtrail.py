"""CloudTrail's event history (LookupEvents): what a key, a user, a role or an instance's
role session did — read for a key's activity review, and by the watch after a cut.

What real AWS does that the tests cannot show (moto does not model LookupEvents; the
tests answer it through the fault layer):
- LookupEvents allows 2 requests per second per account and region; more are answered
  `ThrottlingException`. Every call here takes a token of a 2-a-second bucket per
  region first, and a throttle is retried with backoff.
- One lookup attribute per call, and only these: EventId, EventName, ReadOnly,
  Username, ResourceType, ResourceName, EventSource, AccessKeyId. So a key is looked up
  by AccessKeyId; a user by Username; an instance's role session by Username = the
  instance id (EC2 names the session after the instance); a role by ResourceName = its
  ARN (its AssumeRole calls name it) — the calls its existing sessions make carry
  their session names, which only the role's own trail records.
- Events arrive in the event history about 5 minutes after the call (up to 15): the
  watch reads from the cut every time and keeps the event ids it has reported, so a
  late event is reported when it lands, and once.
- IAM, STS and the other global services record their events in us-east-1.
- Calls refused after a cut (AccessDenied, InvalidClientTokenId for a deactivated key)
  are recorded too, with their errorCode: an attacker still trying is exactly what the
  watch is for."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

from handlers.aws import Clients
from handlers.pacing import Bucket, Limit
from handlers.retry import Backoff, describe_error

UNIT = "watch-cloudtrail"
PERMISSIONS = ("cloudtrail:LookupEvents",)

LOOKUP_INTERVAL = 0.5  # between the pages of one lookup (2 requests a second)
MAX_PAGES = 10  # 50 events a page: the newest 500 per region
# IAM, STS and the other global services record their events in us-east-1: the
# persistence a leaked key makes (new keys, users, policies) is there.
GLOBAL_REGION = "us-east-1"
LOOKUP_RETRY = Backoff(attempts=3, base=0.5, cap=2.0)
LOOKUP_RATE = Limit(2, 2)  # AWS's quota: 2 requests a second, per account and region


def lookup_regions(clients: Clients, regions: list[str] | None) -> list[str]:
    wanted = [GLOBAL_REGION, *(regions or []), clients.region]
    return list(dict.fromkeys(wanted))


def pages(clients: Clients, region: str, attribute: str, value: str, start: datetime,
          stop: Callable[[list[dict[str, Any]]], bool] | None = None,
          pace: Callable[[], None] | None = None) -> tuple[list[dict[str, Any]], str | None]:
    """One region's events for one lookup attribute since `start`, newest first: at most
    MAX_PAGES pages, at most 2 requests a second (`pace` takes a token before each); a
    throttle that outlasts the retries keeps what was read, and says why."""
    trail = clients.in_region(region).client("cloudtrail")
    events: list[dict[str, Any]] = []
    token: str | None = None
    for page in range(MAX_PAGES):
        if pace is not None:
            pace()
        elif page:
            time.sleep(LOOKUP_INTERVAL)
        kwargs: dict[str, Any] = {
            "LookupAttributes": [{"AttributeKey": attribute, "AttributeValue": value}],
            "StartTime": start, "EndTime": datetime.now(UTC), "MaxResults": 50}
        if token:
            kwargs["NextToken"] = token
        try:
            resp = LOOKUP_RETRY.call(partial(trail.lookup_events, **kwargs))
        except Exception as exc:
            code = describe_error(exc).code
            if not events and page == 0:
                raise
            return events, f"stopped after {page} page(s): {code}"
        events += resp.get("Events", [])
        token = resp.get("NextToken")
        if not token or (stop is not None and stop(events)):
            return events, None
    return events, f"only the newest {MAX_PAGES} pages read"


@dataclass(frozen=True)
class TrailEvent:
    """One CloudTrail event, as the watch reports it."""

    event_id: str
    name: str
    source: str
    at: datetime  # naive UTC
    region: str
    source_ip: str
    user_agent: str
    error_code: str
    who: str
    role: str | None = None  # the role whose session made the call


def event_detail(raw: dict[str, Any]) -> dict[str, Any]:
    """The event's own record (LookupEvents gives it as a JSON string)."""
    try:
        detail = json.loads(raw.get("CloudTrailEvent") or "{}")
    except ValueError:
        return {}
    return detail if isinstance(detail, dict) else {}


def read_event(raw: dict[str, Any], region: str) -> TrailEvent:
    detail = event_detail(raw)
    when = raw.get("EventTime")
    if isinstance(when, datetime):
        at = when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo else when
    else:
        at = datetime.now(UTC).replace(tzinfo=None)
    identity = detail.get("userIdentity") or {}
    return TrailEvent(
        event_id=str(raw.get("EventId", "")), name=str(raw.get("EventName", "?")),
        source=str(raw.get("EventSource") or detail.get("eventSource") or "?"), at=at,
        region=str(detail.get("awsRegion") or region),
        source_ip=str(detail.get("sourceIPAddress") or "?"),
        user_agent=str(detail.get("userAgent") or "")[:120],
        error_code=str(detail.get("errorCode") or ""),
        who=str(identity.get("arn") or raw.get("Username") or ""),
        role=(identity.get("sessionContext") or {}).get("sessionIssuer", {}).get("arn"))


class TrailReader:
    """LookupEvents for the watch, paced at AWS's 2 requests a second per account and
    region (one bucket each, shared by every watch of this process)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._lock = threading.Lock()

    def _pace(self, scope: str, region: str) -> None:
        with self._lock:
            bucket = self._buckets.setdefault((scope, region), Bucket(LOOKUP_RATE))
        bucket.take(level=0)

    def events(self, clients: Clients, region: str, attribute: str, value: str,
               since: datetime) -> tuple[list[TrailEvent], str | None]:
        """Events for `attribute` = `value` in `region` since `since` (aware UTC), and
        why they may be incomplete (None: complete). Raises when none could be read."""
        raw, why = pages(clients, region, attribute, value, since,
                         pace=partial(self._pace, clients.scope, region))
        return [read_event(e, region) for e in raw], why


def subjects(kind: str, facts: dict[str, Any], target_id: str) -> list[dict[str, str]]:
    """What to look up after a cut, as LookupEvents attributes (see the module's notes)."""
    if kind == "key":
        return [{"attribute": "AccessKeyId", "value": target_id}]
    if kind == "user":
        name = str(facts.get("user") or target_id.rpartition("/")[2])
        return [{"attribute": "Username", "value": name}]
    if kind == "role":
        return [{"attribute": "ResourceName", "value": target_id}]
    if kind == "instance":
        return [{"attribute": "Username", "value": target_id}]
    return []
