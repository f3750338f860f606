"""Seconds an ENI spends on the allow-all isolation group (cordon-open), measured
between the moment moto applied its move to the open group and the moment it applied
its move to the sealed group, with a fixed latency added to every AWS request by the
fault layer in front of moto's server. Three cases:

- `normal`: an `isolate` run of an in-process bot (target: one round trip);
- `kill_9_restart`: `serve` is killed (SIGKILL) while both ENIs are on the open group
  and started again at once on the same database (target ≤ 5 s);
- `replica_takeover`: two `serve` replicas with different worker ids on one
  PostgreSQL database; the one running the containment is killed while the ENIs are
  on the open group, and the other takes the run over when its lease lapses
  (target ≤ 15 s).

    python benchmarks/open_window.py [--latency-ms 100] [--postgres URL]

Prints JSON; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bot.logs import setup_logging
from handlers.aws import ClientPool
from handlers.isolation import prepare_vpcs
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.faulty_aws import FaultyAws
from sandbox.harness import SECRET, start_bot, stop_process, wait_for
from sandbox.signed import SignedSlack

ROOT = Path(__file__).resolve().parent.parent
MODIFY = "ModifyNetworkInterfaceAttribute"
TARGETS = {"normal": "≤ 1 round trip", "kill_9_restart": 5.0, "replica_takeover": 15.0}


def to(group_id: str) -> Any:
    return lambda p: p.get("SecurityGroupId.1") == group_id and "SecurityGroupId.2" not in p


def windows(proxy: FaultyAws, groups: dict[str, str]) -> dict[str, float]:
    """Per ENI: from the last applied move to the open group to the first applied move
    to the sealed group after it."""
    opened: dict[str, float] = {}
    result: dict[str, float] = {}
    for seen in sorted((s for s in proxy.calls(MODIFY) if s.applied_at),
                       key=lambda s: s.applied_at):
        eni = seen.params.get("NetworkInterfaceId", "")
        if to(groups["open"])(seen.params):
            opened[eni] = seen.applied_at
        elif to(groups["sealed"])(seen.params) and eni in opened and eni not in result:
            result[eni] = round(seen.applied_at - opened[eni], 3)
    return result


def prepared_world(aws: sandbox_world.LocalAws) -> tuple[sandbox_world.World, dict[str, str]]:
    aws.reset()
    world = sandbox_world.seed()
    (row,) = prepare_vpcs(ClientPool().for_region(world.region), [world.vpc_id])
    return world, {"open": row["open"], "sealed": row["sealed"]}


def normal(aws: sandbox_world.LocalAws, latency: float) -> dict[str, Any]:
    world, groups = prepared_world(aws)
    proxy = FaultyAws(aws.url, latency=latency).start()
    fake = FakeSlack().start()
    fake.usergroups["S0ONCALL"] = ["U0LEE"]

    bot = start_bot(fake, f"sqlite:///{tempfile.mkdtemp()}/cordon.db",
                    session_factory=lambda: sandbox_world.proxied_session(proxy.url), warm=True)
    try:
        bot.slack.command("U0DANA", "C1", f"{world.instance_id} isolate benchmark")
        card = wait_for(lambda: fake.channel_messages("C1"), timeout=60)[0]
        bot.deps.warmed.wait(30)
        bot.slack.click_button("U0LEE", "C1", card.ts, "Approve")
        wait_for(lambda: len(windows(proxy, groups)) == 2, timeout=60)
        seconds = windows(proxy, groups)
    finally:
        bot.stop()
        fake.stop()
        proxy.stop()
    worst = max(seconds.values())
    return {"seconds_on_open": seconds, "round_trips": round(worst / latency, 2),
            "met": worst < 2 * latency}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status) == 200
    except Exception:
        return False


def _serve(proxy: FaultyAws, fake: FakeSlack, db: str, port: int, worker: str,
           workdir: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CORDON_"))}
    env.update(sandbox_world.SANDBOX_ENV, AWS_ENDPOINT_URL=proxy.url, PYTHONPATH=str(ROOT),
               SLACK_BOT_TOKEN="xoxb-bench", SLACK_SIGNING_SECRET=SECRET,
               SLACK_API_URL=fake.api_url, CORDON_APPROVERS="S0ONCALL",
               CORDON_DATABASE_URL=db, PORT=str(port), CORDON_WORKER_ID=worker,
               CORDON_LOG_LEVEL="ERROR")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=workdir, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: _healthy(port), timeout=60)
    return proc


def crash(aws: sandbox_world.LocalAws, latency: float, db: str, replica: bool
          ) -> dict[str, Any]:
    world, groups = prepared_world(aws)
    proxy = FaultyAws(aws.url, latency=latency).start()
    fake = FakeSlack().start()
    fake.usergroups["S0ONCALL"] = ["U0LEE"]
    workdir = tempfile.mkdtemp()
    port = _port()
    first = _serve(proxy, fake, db, port, "replica-a", workdir)
    other: subprocess.Popen[bytes] | None = None
    try:
        if replica:
            other = _serve(proxy, fake, db, _port(), "replica-b", workdir)
        slack = SignedSlack(f"http://127.0.0.1:{port}/slack/events", "bench", fake)
        proxy.add(MODIFY, "hold", times=-1, where=to(groups["sealed"]))
        slack.command("U0DANA", "C1", f"{world.instance_id} isolate benchmark")
        card = wait_for(lambda: fake.channel_messages("C1"), timeout=60)[0]
        slack.click_button("U0LEE", "C1", card.ts, "Approve")
        if not proxy.wait_held(2, timeout=60):
            raise RuntimeError("the seal was never attempted")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed = time.monotonic()
        proxy.release()
        if not replica:
            other = _serve(proxy, fake, db, port, "replica-a", workdir)
        wait_for(lambda: len(windows(proxy, groups)) == 2, timeout=120)
        seconds = windows(proxy, groups)
        sealed_at = max(s.applied_at for s in proxy.calls(MODIFY, to(groups["sealed"]))
                        if s.applied_at)
    finally:
        stop_process(first)
        if other is not None:
            stop_process(other)
        fake.stop()
        proxy.stop()
    worst = max(seconds.values())
    target = TARGETS["replica_takeover" if replica else "kill_9_restart"]
    assert isinstance(target, float)
    return {"seconds_on_open": seconds, "kill_to_sealed": round(sealed_at - killed, 3),
            "met": worst <= target}


def postgres_schema(url: str) -> tuple[str, Any]:
    schema = "bench_" + uuid.uuid4().hex[:10]
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))

    def drop() -> None:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()

    return f"{url}?options=-csearch_path%3D{schema}", drop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    args = parser.parse_args(argv)
    latency = args.latency_ms / 1000
    setup_logging("text", "ERROR")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    aws = sandbox_world.LocalAws().start()
    aws.use()
    try:
        result: dict[str, Any] = {"latency_ms": args.latency_ms, "enis": 2,
                                  "targets_seconds": TARGETS}
        result["normal"] = normal(aws, latency)
        result["kill_9_restart"] = crash(aws, latency,
                                         f"sqlite:///{tempfile.mkdtemp()}/cordon.db", False)
        url, drop = postgres_schema(args.postgres)
        try:
            result["replica_takeover"] = crash(aws, latency, url, True)
        finally:
            drop()
        result["met"] = all(result[c]["met"] for c in ("normal", "kill_9_restart",
                                                       "replica_takeover"))
    finally:
        aws.stop()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
