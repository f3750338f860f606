"""The thread is the incident's timeline. Every message is written to the outbox in the
transaction of the change it reports, and sent after, in order, exactly once:

- each thread reply carries its outbox id in Slack's message `metadata`; a reply whose
  send may have landed (a 5xx, a lost connection) is looked for in the thread
  (`conversations.replies` with metadata) before it is sent again;
- `Retry-After` is honoured (slack_sdk's rate-limit retry handler); other failures are
  retried with backoff, the thread's order kept (a message waits for the one before).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot import blocks
from playbooks.logctx import incident_context
from playbooks.models import (
    CARD,
    FILE,
    POST_CARD,
    THREAD,
    Incident,
    Message,
    OutboxMessage,
    StepRecord,
)
from playbooks.runner import process_owner
from playbooks.store import Store

log = logging.getLogger("cordon.notifier")

METADATA_TYPE = "cordon_timeline"
LINES_MAX = 3500  # characters of fleet lines sent as one reply
UNCERTAIN = "uncertain: "


class SlackTimeline:
    """Messages are recorded with the change and sent by one background sender, so that a
    slow Slack never sits on the path to the network cut, and a thread stays in order."""

    def __init__(self, store: Store, client: WebClient) -> None:
        self.store = store
        self.client = client
        self.owner = process_owner()  # named in each claim, for this process's next life
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cordon-slack")
        # Posts a card queued while Slack was unreachable (set by the wiring); raises when
        # Slack still does not answer.
        self.post_card: Callable[[Incident, str], None] | None = None

    # Timeline protocol (the runner writes what these return, with the change) --------

    # A fleet member has no card of its own: it says one line in its fleet's thread when
    # it ends (and what it must say meanwhile), and its fleet's card shows the progress.

    def run_started(self, incident: Incident, resumed: bool) -> list[Message]:
        if incident.fleet_id:
            return []
        return [(THREAD, {"text": blocks.render_run_started(incident, resumed)}), (CARD, {})]

    def step_finished(self, incident: Incident, step: StepRecord) -> list[Message]:
        if incident.fleet_id:
            return []
        # The card shows the progress; updates in a row are sent as one (see flush).
        return [(THREAD, {"text": blocks.render_step(step, incident.region, incident.facts)}),
                (CARD, {})]

    def run_finished(self, incident: Incident) -> list[Message]:
        if incident.fleet_id:
            fleet = {"for_incident": incident.fleet_id}
            return [(THREAD, {"text": blocks.render_member_finished(incident), **fleet}),
                    (CARD, fleet)]
        return [(THREAD, {"text": blocks.render_run_finished(incident)}), (CARD, {})]

    def note(self, incident: Incident, text: str) -> list[Message]:
        if incident.fleet_id:
            return [(THREAD, {"text": f"`{incident.target_id}`: {text}",
                              "for_incident": incident.fleet_id})]
        return [(THREAD, {"text": text})]

    def fleet_started(self, fleet: Incident, members: list[Incident]) -> list[Message]:
        return [(THREAD, {"text": blocks.render_fleet_started(fleet, members)}), (CARD, {})]

    def fleet_finished(self, fleet: Incident, members: list[Incident]) -> list[Message]:
        return [(THREAD, {"text": blocks.render_fleet_finished(fleet, members)}), (CARD, {})]

    def wake(self, incident_id: str) -> None:
        self._send_soon(incident_id)

    # --------------------------------------------------------------------------------

    def post(self, incident: Incident, text: str) -> None:
        self.store.enqueue(incident.id, THREAD, {"text": text})
        self._send_soon(incident.id)

    def update_card(self, incident: Incident) -> None:
        self.store.enqueue(incident.id, CARD, {})
        self._send_soon(incident.id)

    def _send_soon(self, incident_id: str) -> None:
        try:
            self._sender.submit(self._flush_logged, incident_id)
        except RuntimeError:  # shutting down: the next start's sweep sends it
            pass

    def _flush_logged(self, incident_id: str) -> None:
        try:
            self.flush(incident_id)
        except Exception:
            log.exception("outbox flush failed")

    def close(self) -> None:
        """Send what is queued, then stop."""
        self._sender.shutdown(wait=True)

    def flush(self, incident_id: str | None = None) -> int:
        """Send unsent messages in order; an incident whose message fails waits for its
        retry (a wake after the wait), so that its thread never goes out of order. A pass
        that sent something looks again: a message queued meanwhile — perhaps by another
        replica, whose own flush found this one sending and stood aside — goes out now,
        not at the next sweep."""
        sent = 0
        while True:
            more = self._flush_once(incident_id)
            sent += more
            if not more:
                return sent

    def _flush_once(self, incident_id: str | None) -> int:
        sent = 0
        blocked: set[str] = set()
        pending = self.store.unsent(incident_id)
        # A card update is superseded by a later one of the same card: only the last is
        # sent (the card is rendered from the store), which keeps chat.update well under
        # Slack's rate limit while steps finish one after another.
        last_card = {m.incident_id: m.id for m in pending if m.kind == CARD}
        for msg in pending:
            if msg.incident_id in blocked:
                continue
            incident = self.store.get(msg.incident_id)
            if incident is not None and incident.fleet_id and incident.card_ts is None:
                # A fleet member's own message (an evidence file, a note of the sweep): it
                # has no thread; its record is in the export.
                self.store.mark_superseded(msg.id)
                continue
            if msg.kind == POST_CARD and incident is not None and incident.card_ts is not None:
                # The card went out another way meanwhile (a later finding posted it).
                self.store.mark_superseded(msg.id)
                continue
            if incident is not None and incident.card_ts is None and msg.kind == POST_CARD \
                    and self.post_card is not None:
                if not self.store.claim_message(msg.id, owner=self.owner):
                    blocked.add(msg.incident_id)
                    continue
                try:
                    self.post_card(incident, str(msg.payload.get("team_id", "")))
                except Exception as exc:
                    _, retry_in = _classify(exc, msg.attempts + 1)
                    log.warning("queued card not posted; will retry",
                                extra={"incident": incident.id, "retry_in": retry_in,
                                       "error": str(exc)[:200]})
                    self.store.mark_failed(msg.id, str(exc), retry_in)
                    blocked.add(msg.incident_id)
                    self._wake_later(incident.id, retry_in)
                    continue
                self.store.mark_sent(msg.id)
                sent += 1
                blocked.add(msg.incident_id)  # its thread goes out in the next pass
                continue
            if incident is None or incident.card_ts is None:
                blocked.add(msg.incident_id)  # no card yet: its posting wakes the thread
                continue
            if not self.store.claim_message(msg.id, owner=self.owner):
                blocked.add(msg.incident_id)  # another flush is sending it, or it waits
                continue
            if msg.kind == CARD and last_card.get(msg.incident_id) != msg.id:
                self.store.mark_superseded(msg.id)
                continue
            batch = [msg, *self._lines_after(msg, pending)]
            with incident_context(incident.id):
                try:
                    self._deliver(incident, msg, batch)
                except Exception as exc:
                    uncertain, retry_in = _classify(exc, msg.attempts + 1)
                    log.warning("slack send failed; will retry",
                                extra={"kind": msg.kind, "uncertain": uncertain,
                                       "retry_in": retry_in, "error": str(exc)[:200]})
                    for one in batch:
                        self.store.mark_failed(one.id, (UNCERTAIN if uncertain else "")
                                               + str(exc), retry_in)
                    blocked.add(msg.incident_id)
                    self._wake_later(incident.id, retry_in)
                    continue
            for one in batch:
                self.store.mark_sent(one.id)
            sent += len(batch)
        return sent

    def _lines_after(self, msg: OutboxMessage, pending: list[OutboxMessage]
                     ) -> list[OutboxMessage]:
        """A fleet's member lines waiting together go out as one reply (Slack takes about
        one message a second per channel; fifty instances end within seconds): those
        queued right after `msg`, card updates between them aside, within one reply's
        length; each is claimed like any message."""
        if not _member_line(msg):
            return []
        joined, size = [], len(msg.payload.get("text", ""))
        for later in pending[pending.index(msg) + 1:]:
            if later.incident_id != msg.incident_id or later.kind == CARD:
                continue
            if not _member_line(later):
                break
            size += 1 + len(later.payload.get("text", ""))
            if size > LINES_MAX or not self.store.claim_message(later.id, owner=self.owner):
                break
            joined.append(later)
        return joined

    def _wake_later(self, incident_id: str, seconds: float) -> None:
        """Try again once the wait is over (the sweep remains the backstop)."""
        timer = threading.Timer(seconds + 0.05, self._send_soon, args=(incident_id,))
        timer.daemon = True
        timer.start()

    def _deliver(self, incident: Incident, msg: OutboxMessage,
                 batch: list[OutboxMessage] | None = None) -> None:
        assert incident.card_ts is not None
        if msg.kind == CARD:
            # An update in place: sending it twice shows the same card.
            members = self.store.members(incident.id) if incident.kind == "fleet" else []
            text, card = blocks.render_card(incident, self.store.votes(incident.id),
                                            self.store.steps(incident.id), members)
            self.client.chat_update(channel=incident.channel_id, ts=incident.card_ts,
                                    text=text, blocks=card)
            return
        # An earlier attempt may have landed unless it is known to have failed: its answer
        # was lost (a 5xx, a dropped connection), or the process died before recording it.
        maybe_sent = msg.attempts >= 1 and (not msg.last_error
                                            or msg.last_error.startswith(UNCERTAIN))
        if msg.kind == FILE:
            item = self.store.evidence_by_id(int(msg.payload["evidence_id"]))
            if item is None:
                return
            if maybe_sent and self._in_thread(incident, lambda m: any(
                    f.get("title") == item.name for f in m.get("files", []))):
                log.info("upload had landed; not sent again", extra={"outbox": msg.id})
                return
            self.client.files_upload_v2(
                channel=incident.channel_id, thread_ts=incident.card_ts,
                content=item.content, filename=item.name, title=item.name,
                initial_comment=blocks.render_evidence(item))
            return
        batch = batch or [msg]
        ids = [one.id for one in batch]
        note = msg.payload.get("finding_note")
        if note and msg.payload.get("update"):
            # A finding's note kept current: its earlier message updated in place.
            earlier = self._find_in_thread(incident, lambda m: (
                (m.get("metadata") or {}).get("event_type") == METADATA_TYPE
                and (m["metadata"].get("event_payload") or {}).get("finding_note") == note))
            if earlier is not None:
                self.client.chat_update(channel=incident.channel_id, ts=earlier["ts"],
                                        text=msg.payload["text"])
                return
        if maybe_sent and self._in_thread(incident, lambda m: (
                (m.get("metadata") or {}).get("event_type") == METADATA_TYPE
                and msg.id in _outbox_ids(m["metadata"].get("event_payload") or {}))):
            log.info("message had landed; not sent again", extra={"outbox": msg.id})
        else:
            payload: dict[str, Any] = {"outbox_id": msg.id, "incident": incident.id}
            if note:
                payload["finding_note"] = note
            if len(ids) > 1:
                payload["outbox_ids"] = ids
            # A reply that must be seen (an automatic containment nobody reviewed) is
            # also sent to the channel.
            broadcast = bool(msg.payload.get("broadcast"))
            self.client.chat_postMessage(
                channel=incident.channel_id, thread_ts=incident.card_ts,
                text="\n".join(one.payload["text"] for one in batch), unfurl_links=False,
                unfurl_media=False,
                metadata={"event_type": METADATA_TYPE, "event_payload": payload},
                reply_broadcast=broadcast,
            )
        if msg.payload.get("plan_done"):
            # The full plan is in the thread: the card's buttons may now appear.
            self.store.plan_posted(incident.id)

    def _in_thread(self, incident: Incident, match: Callable[[dict[str, Any]], bool]) -> bool:
        """Whether the incident's thread holds a message that `match`es."""
        return self._find_in_thread(incident, match) is not None

    def _find_in_thread(self, incident: Incident, match: Callable[[dict[str, Any]], bool]
                        ) -> dict[str, Any] | None:
        """The first message of the incident's thread that `match`es, if any."""
        assert incident.card_ts is not None
        cursor = None
        while True:
            resp = self.client.conversations_replies(
                channel=incident.channel_id, ts=incident.card_ts, include_all_metadata=True,
                limit=200, **({"cursor": cursor} if cursor else {}))
            messages: list[dict[str, Any]] = resp.get("messages", [])
            found = next((m for m in messages if match(m)), None)
            if found is not None:
                return found
            cursor = (resp.get("response_metadata") or {}).get("next_cursor")
            if not resp.get("has_more") or not cursor:
                return None


def _member_line(msg: OutboxMessage) -> bool:
    """A fleet member's line in its fleet's thread; a finding's note (kept current in
    place, so a message of its own) is not one."""
    return (msg.kind == THREAD and bool(msg.payload.get("for_incident"))
            and not msg.payload.get("finding_note"))


def _outbox_ids(payload: dict[str, Any]) -> list[Any]:
    """The outbox messages a reply carries (several fleet lines go as one)."""
    return list(payload.get("outbox_ids") or [payload.get("outbox_id")])


def _classify(exc: Exception, attempt: int) -> tuple[bool, float]:
    """Whether the message may have landed, and how long to wait before trying again:
    Slack's Retry-After on a 429 (not sent); backoff on a 5xx or a lost answer (perhaps
    sent); backoff on an API error (not sent)."""
    backoff = float(min(60.0, 0.5 * 2 ** max(0, attempt - 1)))
    if isinstance(exc, SlackApiError):
        status = getattr(exc.response, "status_code", 200)
        if status == 429:
            after = (exc.response.headers or {}).get("Retry-After") or \
                (exc.response.headers or {}).get("retry-after")
            return False, float(after or backoff)
        return status >= 500, backoff
    return True, backoff  # no answer at all: it may have landed

