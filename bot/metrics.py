"""`GET /metrics` in Prometheus' text format, written with prometheus_client, on a
registry of Cordon's own (nothing in the library's global one).

- histograms, by playbook and source: time to decision (card → decision), time to cut
  (Approve → cut verified), time to contain (finding or request → contained);
- counters: incidents by playbook, source and final status (each end of a run, each
  denial and expiry); AWS throttling answers by action (every attempt, botocore's own
  retries included); Slack sends by method and result; automatic containments by rule;
  CloudTrail events the watch found;
- gauges, read when scraped: outbox messages not sent yet, the intake's lag (the age of
  the oldest message its last poll received) and runs in progress.

The counters and histograms count what this process did (a replica's own series, as
Prometheus expects); the gauges read the shared database, so every replica reports the
same value for them — aggregate those with max(), not sum()."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from playbooks.catalogue import get_playbook
from playbooks.lifecycle import Lifecycle
from playbooks.models import Incident, StepRecord
from playbooks.store import Store

log = logging.getLogger("cordon.metrics")

# Seconds: a cut takes about one; a decision, minutes; a containment, up to hours.
BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 86400)
SENDS = ("chat.", "views.", "files.completeUploadExternal")


def source_of(incident: Incident) -> str:
    return str((incident.facts or {}).get("source") or "slack")


class Metrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        by = ["playbook", "source"]
        r = self.registry
        self.time_to_decision = Histogram(
            "cordon_time_to_decision_seconds", "From the card posted to the decision.", by,
            buckets=BUCKETS, registry=r)
        self.time_to_cut = Histogram(
            "cordon_time_to_cut_seconds", "From the approval to the cut verified.", by,
            buckets=BUCKETS, registry=r)
        self.time_to_contain = Histogram(
            "cordon_time_to_contain_seconds",
            "From the finding's creation (or the request in Slack) to the end of the run "
            "that cut the target.", by, buckets=BUCKETS, registry=r)
        self.incidents = Counter(
            "cordon_incidents", "Incidents that reached an end, by final status.",
            [*by, "status"], registry=r)
        self.throttles = Counter(
            "cordon_aws_throttles", "AWS throttling answers, by action.", ["action"],
            registry=r)
        self.slack_sends = Counter(
            "cordon_slack_sends", "Slack Web API sends, by method and result (ok, or "
            "Slack's error, or unreachable).", ["method", "result"], registry=r)
        self.auto_contained = Counter(
            "cordon_auto_contained", "Runs a CORDON_AUTO_CONTAIN rule started, counted when "
            "they end.",
            ["rule"], registry=r)
        self.watch_events = Counter(
            "cordon_watch_events", "CloudTrail events found by the watch after a cut.",
            ["playbook"], registry=r)
        self.gauges = StoreGauges(store)
        r.register(self.gauges)

    def wsgi(self) -> Callable[..., Any]:
        return make_wsgi_app(self.registry)

    def incident_ended(self, incident: Incident, steps: Sequence[StepRecord]) -> None:
        labels = {"playbook": incident.playbook, "source": source_of(incident)}
        self.incidents.labels(status=incident.status, **labels).inc()
        if incident.kind in ("release", "fleet"):
            return
        if incident.auto_rule and incident.status not in ("denied", "expired"):
            self.auto_contained.labels(rule=incident.auto_rule).inc()
        durations = Lifecycle.of(incident, steps, get_playbook(incident.playbook)).durations()
        for histogram, key in ((self.time_to_decision, "time_to_decision"),
                               (self.time_to_cut, "time_to_cut"),
                               (self.time_to_contain, "time_to_contain")):
            seconds = durations[key]
            if seconds is not None:
                histogram.labels(**labels).observe(seconds)

    def slack_sent(self, method: str, result: str) -> None:
        if method.startswith(SENDS):
            self.slack_sends.labels(method=method, result=result).inc()


class StoreGauges(Collector):
    """Read when scraped, from the database every replica shares."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.intake_lag: Callable[[], float] = lambda: 0.0

    def describe(self) -> list[Any]:
        return []  # read from the database when scraped, not when registered

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            unsent, running = self.store.gauges()
        except Exception as exc:
            log.warning("metrics: the database did not answer", extra={"error": str(exc)[:200]})
            return
        yield GaugeMetricFamily("cordon_outbox_unsent", "Slack messages written, not sent yet.",
                                value=unsent)
        yield GaugeMetricFamily("cordon_runs_in_progress",
                                "Approved or running containments and releases.",
                                value=running)
        yield GaugeMetricFamily("cordon_intake_lag_seconds",
                                "Age of the oldest finding message the intake's last poll "
                                "received (0 when it received none).",
                                value=self.intake_lag())


class CountingWebClient(WebClient):
    """slack_sdk's WebClient that tells `on_call(method, result)` how each call went."""

    def __init__(self, *args: Any, on_call: Callable[[str, str], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_call = on_call

    def __deepcopy__(self, memo: dict[int, Any]) -> CountingWebClient:
        # Bolt deep-copies a request's context for its lazy listeners: they share this
        # client (it holds no per-request state), so that their sends are counted too.
        return self

    def api_call(self, api_method: str, **kwargs: Any) -> Any:
        try:
            response = super().api_call(api_method, **kwargs)
        except SlackApiError as exc:
            self._tell(api_method, str(exc.response.get("error") or "error"))
            raise
        except Exception:
            self._tell(api_method, "unreachable")
            raise
        self._tell(api_method, "ok")
        return response

    def _tell(self, method: str, result: str) -> None:
        if self.on_call is not None:
            try:
                self.on_call(method, result)
            except Exception:
                log.exception("metrics: a Slack call could not be counted")
