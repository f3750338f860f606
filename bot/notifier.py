"""The thread is the incident's timeline. Every message is written to the outbox
first and sent after, in order, so that a Slack outage loses nothing: the sweep
sends what is left."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from slack_sdk import WebClient

from bot import blocks
from playbooks.logctx import incident_context
from playbooks.store import Evidence, Incident, StepRecord, Store

log = logging.getLogger("cordon.notifier")

THREAD, CARD, FILE = "thread", "card", "file"


class SlackTimeline:
    """Messages are recorded at once and sent by one background sender, so that a slow
    Slack never sits on the path to the network cut, and a thread stays in order."""

    def __init__(self, store: Store, client: WebClient) -> None:
        self.store = store
        self.client = client
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cordon-slack")

    # Timeline protocol (called by the runner) -----------------------------------------

    def run_started(self, incident: Incident, resumed: bool) -> None:
        self.post(incident, blocks.render_run_started(incident, resumed))
        self.update_card(incident)

    def step_finished(self, incident: Incident, step: StepRecord) -> None:
        self.post(incident, blocks.render_step(step))

    def evidence_stored(self, incident: Incident, evidence: list[Evidence]) -> None:
        for item in evidence:
            self.store.enqueue(incident.id, FILE, {"evidence_id": item.id})
        self._send_soon(incident.id)

    def run_finished(self, incident: Incident) -> None:
        self.post(incident, blocks.render_run_finished(incident))
        self.update_card(incident)

    def note(self, incident: Incident, text: str) -> None:
        self.post(incident, text)

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
        """Send unsent messages in order; an incident whose message fails waits for the
        next flush, so that its thread never goes out of order."""
        sent = 0
        blocked: set[str] = set()
        for msg in self.store.unsent(incident_id):
            if msg.incident_id in blocked:
                continue
            if not self.store.claim_message(msg.id):
                blocked.add(msg.incident_id)  # another flush is sending it
                continue
            incident = self.store.get(msg.incident_id)
            if incident is None or incident.card_ts is None:
                continue
            with incident_context(incident.id):
                try:
                    if msg.kind == CARD:
                        text, card = blocks.render_card(incident,
                                                        self.store.votes(incident.id))
                        self.client.chat_update(channel=incident.channel_id, ts=incident.card_ts,
                                                text=text, blocks=card)
                    elif msg.kind == FILE:
                        self._upload(incident, int(msg.payload["evidence_id"]))
                    else:
                        self.client.chat_postMessage(
                            channel=incident.channel_id, thread_ts=incident.card_ts,
                            text=msg.payload["text"], unfurl_links=False, unfurl_media=False,
                        )
                except Exception as exc:
                    log.warning("slack send failed; will retry",
                                extra={"kind": msg.kind, "error": str(exc)[:200]})
                    self.store.mark_failed(msg.id, str(exc))
                    blocked.add(msg.incident_id)
                    continue
            self.store.mark_sent(msg.id)
            sent += 1
        return sent

    def _upload(self, incident: Incident, evidence_id: int) -> None:
        item = self.store.evidence_by_id(evidence_id)
        if item is None:
            return
        self.client.files_upload_v2(
            channel=incident.channel_id, thread_ts=incident.card_ts, content=item.content,
            filename=item.name, title=item.name,
            initial_comment=blocks.render_evidence(item),
        )
