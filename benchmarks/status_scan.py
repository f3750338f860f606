"""How long the store's scanning queries take with many incidents: `/contain status`
(the most recent), the sender's unsent messages, the snapshot follow-up (steps by name
and status) — on a SQLite file with N incidents. Prints JSON (milliseconds, median of
20 runs).

    python benchmarks/status_scan.py [--incidents 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import insert, text

from playbooks.models import Incident, OutboxMessage, StepRecord, utcnow
from playbooks.store import Store


def seed(store: Store, n: int) -> None:
    now = utcnow()
    incidents, steps, outbox = [], [], []
    for i in range(n):
        iid = f"CRD-{i:06d}"
        incidents.append({"id": iid, "kind": "instance", "target_id": f"i-{i:017x}",
                          "region": "us-east-1", "account": "1", "playbook": "full",
                          "reason": "r", "requester": "U1", "channel_id": "C1",
                          "card_ts": f"{i}.0", "status": "contained", "facts": {},
                          "options": {}, "created_at": now - timedelta(minutes=n - i),
                          "expires_at": now, "summary": "", "approvals_required": 1,
                          # reported long ago, but for the last few
                          "snapshots_reported_at": now if i < n - 5 else None})
        steps += [{"incident_id": iid, "position": p, "name": name, "status": "succeeded"}
                  for p, name in enumerate(("isolate-security-groups", "snapshot-volumes"))]
        outbox.append({"incident_id": iid, "kind": "thread", "payload": {"text": "x"},
                       "created_at": now, "sent_at": now, "attempts": 1})
    with store.session() as s:
        s.execute(insert(Incident), incidents)
        s.execute(insert(StepRecord), steps)
        s.execute(insert(OutboxMessage), outbox)


def timed(fn: Callable[[], Any]) -> float:
    runs = []
    for _ in range(20):
        started = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(runs), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--incidents", type=int, default=10000)
    parser.add_argument("--without-indexes", action="store_true",
                        help="drop migration 0003's indexes first, to compare")
    args = parser.parse_args(argv)
    store = Store.from_url(f"sqlite:///{tempfile.mkdtemp(prefix='cordon-scan-')}/cordon.db")
    if args.without_indexes:
        with store.session() as s:
            for index in ("ix_incidents_created_at", "ix_steps_name_status", "ix_outbox_unsent"):
                s.execute(text(f"DROP INDEX {index}"))
    seed(store, args.incidents)
    result = {
        "incidents": args.incidents, "indexes": not args.without_indexes,
        "status_recent_ms": timed(lambda: store.recent(10)),
        "unsent_ms": timed(lambda: store.unsent()),
        "snapshots_to_follow_ms": timed(lambda: store.snapshots_to_follow()),
        "for_target_ms": timed(lambda: store.for_target(f"i-{args.incidents // 2:017x}")),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
