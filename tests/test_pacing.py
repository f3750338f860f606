"""EC2's request token buckets, which moto never shows: the fault layer answers as an
empty bucket answers (`RequestLimitExceeded`), and Cordon paces its own calls per API so
that a burst of containments meets none on the path to the cut, the cut's calls first.
Through the real endpoint against moto, every call through the fault layer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest

from handlers.pacing import CUT, REST, Bucket, Limit, Pacer, parse_limits, urgency
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.faulty_aws import FaultyAws
from sandbox.harness import RunningBot, start_bot, wait_for
from tests.conftest import AwsTrace, approve_at_once
from tests.test_failsafe import MODIFY
from tests.test_tracked_flows import sealed_group

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"
# AWS's buckets scaled down (sizes and refills), so that a handful of instances meets
# the same wall a worm across a fleet meets at AWS's sizes.
SMALL = {"ModifyNetworkInterfaceAttribute": (6, 8), "describe": (12, 20), "mutating": (4, 8),
         "CreateTags": (6, 8), "CreateSnapshot": (6, 8)}
CUT_PATH = ("ModifyNetworkInterfaceAttribute", "CreateNetworkAclEntry")


def on_the_cut(action: str, params: dict[str, str]) -> bool:
    """A call the cut waits for: the moves (not the conntrack timeouts lowered after the
    seal, which may meet a throttle when calls granted apart land together)."""
    return action in CUT_PATH and not any(k.startswith("ConnectionTracking") for k in params)


def _buckets_setting() -> str:
    return ",".join(f"{k}={s}/{r}" for k, (s, r) in SMALL.items())


@pytest.fixture
def throttling(faulty: FaultyAws) -> FaultyAws:
    faulty.throttle_like_ec2(limits=SMALL)
    return faulty


def _bot(fake_slack: FakeSlack, faulty: FaultyAws, tmp_path: Any, aws_trace: AwsTrace,
         **env: str) -> RunningBot:
    def session() -> boto3.session.Session:
        s = sandbox_world.proxied_session(faulty.url)
        from handlers.aws import hook

        hook(s, "before-parameter-build.*.*", aws_trace._before_call)
        return s

    return start_bot(fake_slack, f"sqlite:///{tmp_path}/cordon.db", approvers="S0ONCALL,U0ALEX",
                     session_factory=session, **env)


@pytest.fixture
def paced_bot(fake_slack: FakeSlack, world: sandbox_world.World, throttling: FaultyAws,
              tmp_path: Any, aws_trace: AwsTrace) -> Iterator[RunningBot]:
    running = _bot(fake_slack, throttling, tmp_path, aws_trace,
                   CORDON_EC2_BUCKETS=_buckets_setting())
    yield running
    running.stop()
    assert aws_trace.undeclared() == []


def _burst(bot: RunningBot, ids: list[str], playbook: str) -> list[Any]:
    return approve_at_once(bot, ids, f"{playbook} worm")

def test_a_burst_of_containments_meets_no_throttling_on_the_path_to_the_cut(
        paced_bot: RunningBot, world: sandbox_world.World, throttling: FaultyAws) -> None:
    """Six instances with two ENIs each, approved at once, against buckets that hold
    fewer tokens than the cut needs: every ENI sealed, every incident contained, and not
    one `RequestLimitExceeded` on a call of the cut — Cordon waited for tokens instead."""
    ids = [world.instance_id, *sandbox_world.add_instances(world, 5)]
    incidents = _burst(paced_bot, ids, "isolate")
    assert [i.status for i in incidents] == ["contained"] * len(ids), [
        i.summary for i in incidents]
    sealed = sealed_group(world.vpc_id)
    for instance_id in ids:
        groups = sandbox_world.groups_by_eni(instance_id)
        assert len(groups) == 2 and all(g == [f"cordon-sealed ({sealed})"]
                                        for g in groups.values()), groups
    throttled = [(s.action, s.params) for s in throttling.seen if s.answered == "throttle"]
    assert [a for a in throttled if on_the_cut(*a)] == []
    # The buckets were the limit: the cut needed more tokens than they held at the start.
    moves = throttling.calls(MODIFY)
    assert len(moves) > SMALL[MODIFY][0]


def test_unpaced_the_same_burst_is_throttled(
        fake_slack: FakeSlack, world: sandbox_world.World, throttling: FaultyAws,
        tmp_path: Any, aws_trace: AwsTrace) -> None:
    """The emulated buckets bite: without Cordon's pacing, the same burst meets
    `RequestLimitExceeded` on the cut's own calls (what the test above rules out)."""
    bot = _bot(fake_slack, throttling, tmp_path, aws_trace, CORDON_EC2_PACING="false")
    try:
        ids = [world.instance_id, *sandbox_world.add_instances(world, 5)]
        _burst(bot, ids, "isolate")
    finally:
        bot.stop()
    throttled = [(s.action, s.params) for s in throttling.seen if s.answered == "throttle"]
    assert any(on_the_cut(*a) for a in throttled)


def test_a_cut_call_is_served_before_the_calls_waiting_ahead_of_it() -> None:
    """One bucket, empty: three evidence calls wait, then a seal arrives; the seal gets
    the next token (the head waiter had none yet)."""
    bucket = Bucket(Limit(1, 10))
    bucket.take(REST)  # empty now
    served: list[str] = []
    lock = threading.Lock()

    def call(name: str, level: int) -> None:
        bucket.take(level)
        with lock:
            served.append(name)

    waiting = [threading.Thread(target=call, args=(f"evidence-{n}", REST)) for n in range(3)]
    for t in waiting:
        t.start()
    wait_for(lambda: len(bucket.queue) == 3, timeout=5, every=0.001)
    seal = threading.Thread(target=call, args=("seal", CUT))
    seal.start()
    for t in [*waiting, seal]:
        t.join(timeout=10)
    assert served[0] == "seal" and sorted(served[1:]) == ["evidence-0", "evidence-1",
                                                          "evidence-2"]


def test_the_pacer_keeps_one_bucket_per_account_region_and_api() -> None:
    pacer = Pacer({"ModifyNetworkInterfaceAttribute": Limit(3, 1000)})
    assert pacer.bucket("", "us-east-1", MODIFY) is pacer.bucket("", "us-east-1", MODIFY)
    assert pacer.bucket("prod", "us-east-1", MODIFY) is not pacer.bucket("", "us-east-1",
                                                                         MODIFY)
    # AWS's sizes, less the spare kept for calls that land in another order.
    assert pacer.limit_for("DescribeInstances") == Limit(90, 19)
    assert pacer.limit_for("CreateImage") == Limit(45, 4.75)
    assert pacer.limit_for(MODIFY) == Limit(2, 950)
    with urgency(CUT):
        for _ in range(3):  # the third waits for a refill (a millisecond)
            pacer.take("", "us-east-1", MODIFY)
    assert pacer.waited.get(MODIFY, 0) > 0


@pytest.mark.parametrize("text", ["ModifyNetworkInterfaceAttribute=100", "x=0/5", "=1/1",
                                  "mutating=10/0"])
def test_a_malformed_bucket_setting_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_limits(text)


def test_bucket_refill_is_bounded_by_its_size() -> None:
    """A bucket idle for ten seconds holds its size, not ten seconds of refill (the
    bucket's own clock, moved by hand: no test of timing here)."""
    now = [100.0]
    bucket = Bucket(Limit(3, 1000), clock=lambda: now[0])
    now[0] += 10
    for _ in range(3):
        assert bucket.take(REST) == 0
    assert bucket.tokens == 0
    now[0] += 0.0005
    assert bucket.busy() and bucket.tokens == pytest.approx(0.5)


def test_a_pair_on_a_bucket_of_one_token_does_not_wait_for_ever() -> None:
    """A bucket too small to hold a move and its seal's token: the pair pays one by one."""
    from handlers.pacing import pair

    pacer = Pacer({MODIFY: Limit(2, 1000)})  # one token, after the spare
    assert pacer.limit_for(MODIFY).size == 1
    done = threading.Event()

    def moves() -> None:
        with pair(MODIFY):
            pacer.take("", "us-east-1", MODIFY)
            pacer.take("", "us-east-1", MODIFY)
        done.set()

    threading.Thread(target=moves, daemon=True).start()
    assert done.wait(5)
