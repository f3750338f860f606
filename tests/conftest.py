"""Shared test fixtures: moto's server over real HTTP (never mock_aws in-process), a
fake Slack Web API over HTTP, and both databases."""

from __future__ import annotations

import functools
import gc
import json
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from sqlalchemy import Engine, create_engine, text

from handlers import autoscaling, evidence, isolation
from handlers.attribution import acting
from handlers.aws import ClientPool, hook
from handlers.isolation import prepare_vpcs
from handlers.permissions import declared, iam_action
from handlers.retry import Backoff
from playbooks.store import Store
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.faulty_aws import FaultyAws, error_xml
from sandbox.harness import RunningBot, start_bot

# Everything imported so far lives as long as the test process: the cyclic collector
# need not walk it again, and runs less often (botocore's models are large).
gc.freeze()
gc.set_threshold(200_000, 50, 50)

POSTGRES_URL = os.environ.get("CORDON_TEST_POSTGRES_URL",
                              "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def local_aws() -> Iterator[sandbox_world.LocalAws]:
    aws = sandbox_world.LocalAws().start()
    aws.use()
    yield aws
    aws.stop()


@pytest.fixture
def world(local_aws: sandbox_world.LocalAws) -> sandbox_world.World:
    local_aws.reset()
    return sandbox_world.seed()


@pytest.fixture(scope="session")
def _fake_slack() -> Iterator[FakeSlack]:
    fake = FakeSlack().start()
    yield fake
    fake.stop()


@pytest.fixture
def fake_slack(_fake_slack: FakeSlack) -> Iterator[FakeSlack]:
    _fake_slack.reset()
    _fake_slack.usergroups["S0ONCALL"] = ["U0LEE", "U0KIM"]
    yield _fake_slack
    # Everything Cordon sent passes Block Kit's validation and Slack's escaping rules.
    assert _fake_slack.violations == []


@functools.cache
def _postgres_available() -> bool:
    try:
        engine = create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


@functools.cache
def _admin() -> Engine:
    return create_engine(POSTGRES_URL)


# Schemas an earlier test of this process migrated and that were emptied after it: the
# bots' tests take one instead of migrating a new schema each (Alembic's six revisions
# cost more than the test's own queries). Dropped when the process ends.
_EMPTIED: list[str] = []
_MADE: list[str] = []


def _empty(schema: str) -> bool:
    """Every row of the schema gone, its migrations kept; False if it could not be (a
    lock still held by a connection the test left behind)."""
    try:
        with _admin().begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '2s'"))
            tables = [row[0] for row in conn.execute(text(
                "SELECT tablename FROM pg_tables WHERE schemaname = :schema "
                "AND tablename <> 'alembic_version'"), {"schema": schema})]
            if tables:
                conn.execute(text("TRUNCATE " + ", ".join(f"{schema}.{t}" for t in tables)
                                  + " RESTART IDENTITY CASCADE"))
        return True
    except Exception:
        return False


def _drop(schema: str) -> None:
    with _admin().begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))


def _database(kind: str, tmp_path: Any, reuse: bool = False) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/cordon.db"
        return
    if not _postgres_available():
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL}")
        pytest.skip("PostgreSQL is not reachable")
    # A schema of its own per test (`reuse`: one emptied after an earlier test): tests
    # never see each other's rows.
    if reuse and _EMPTIED:
        schema = _EMPTIED.pop()
    else:
        schema = "t_" + uuid.uuid4().hex[:12]
        with _admin().begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        _MADE.append(schema)
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    if reuse and _empty(schema):
        _EMPTIED.append(schema)
    else:
        _drop(schema)
        _MADE.remove(schema)


@pytest.fixture(scope="session", autouse=True)
def _schemas_dropped() -> Iterator[None]:
    yield
    for schema in list(_MADE):
        _drop(schema)
    if _postgres_available():
        _admin().dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """Both databases: for the store's contract (conditional updates, leases, outbox)."""
    yield from _database(request.param, tmp_path)


@pytest.fixture
def e2e_database_url(tmp_path: Any) -> Iterator[str]:
    """One database for the end-to-end flows: PostgreSQL, which replicas use (SQLite,
    the default, runs the `serve` subprocess tests and the fault-layer ones)."""
    yield from _database("postgresql" if os.environ.get("CI") or _postgres_available()
                         else "sqlite", tmp_path, reuse=True)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store.from_url(database_url)
    yield s
    s.engine.dispose()


def aws_client(service: str, region: str = "us-east-1") -> Any:
    """One client per service for the tests' own look-ups (sandbox.world.client)."""
    return sandbox_world.client(service, region)


class AwsTrace:
    """Counts AWS calls the bot makes, and injects faults (botocore events)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.attributed: list[tuple[str | None, str]] = []
        self.faults: dict[str, list[tuple[int, str, str]]] = {}
        self.lock = threading.Lock()
        self.delay: dict[str, float] = {}

    def session(self) -> boto3.session.Session:
        session = sandbox_world.new_session()
        hook(session, "before-parameter-build.*.*", self._before_call)
        hook(session, "before-send.*.*", self._before_send, first=True)
        return session

    def _before_call(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        action = iam_action(model.service_model.signing_name, model.name)
        with self.lock:
            self.calls.append((model.name, params))
            self.attributed.append((acting.get(), action))

    def undeclared(self) -> list[str]:
        """Calls made by no declared unit, or not in its declared permissions."""
        table = declared()
        with self.lock:
            return sorted({f"{unit}: {action}" for unit, action in self.attributed
                           if unit is None or action not in table.get(unit, ())})

    def _before_send(self, request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        op = event_name.rsplit(".", 1)[-1]
        if op in self.delay:
            threading.Event().wait(self.delay[op])
        with self.lock:
            pending = self.faults.get(op)
            if not pending:
                return None
            status, code, message = pending.pop(0)
        body = error_xml(event_name.split(".")[1], code, message)
        return AWSResponse(request.url, status, {}, _Raw(body))

    def fail(self, operation: str, code: str, message: str = "injected", times: int = 1,
             status: int = 400) -> None:
        with self.lock:
            self.faults.setdefault(operation, []).extend([(status, code, message)] * times)

    def count(self, operation: str, where: Callable[[dict[str, Any]], bool] | None = None) -> int:
        with self.lock:
            return sum(1 for op, p in self.calls if op == operation and (where is None or where(p)))


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


@pytest.fixture
def aws_trace() -> AwsTrace:
    return AwsTrace()


@pytest.fixture
def pool(local_aws: sandbox_world.LocalAws, aws_trace: AwsTrace) -> Iterator[ClientPool]:
    yield ClientPool(aws_trace.session)
    # Every AWS call belongs to a unit that declared it (the IAM policy comes from these).
    assert aws_trace.undeclared() == []


@pytest.fixture
def bot(fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
        aws_trace: AwsTrace) -> Iterator[RunningBot]:
    running = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL,U0ALEX",
                        regions="us-east-1,eu-west-1", session_factory=aws_trace.session)
    yield running
    running.stop()
    # Every AWS call belongs to a unit that declared it (the IAM policy comes from these).
    assert aws_trace.undeclared() == []


@pytest.fixture
def faulty(local_aws: sandbox_world.LocalAws) -> Iterator[FaultyAws]:
    """The fault layer between the bot and moto's server."""
    proxy = FaultyAws(local_aws.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def groups(world: sandbox_world.World) -> dict[str, str]:
    """The VPC's isolation groups, made ahead (`prepare`)."""
    (row,) = prepare_vpcs(ClientPool(sandbox_world.new_session).for_region("us-east-1"),
                          [world.vpc_id])
    return {"open": row["open"], "sealed": row["sealed"]}


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> Backoff:
    quick = Backoff(attempts=4, base=0.05, cap=0.2)
    for module, names in ((isolation, ("SEAL_RETRY", "RESTORE_RETRY")),
                          (autoscaling, ("READ_RETRY",)), (evidence, ("CREATE_RETRY",))):
        for name in names:
            monkeypatch.setattr(module, name, quick)
    return quick


@pytest.fixture
def faulty_bot(fake_slack: FakeSlack, world: sandbox_world.World, faulty: FaultyAws,
               tmp_path: Any, aws_trace: AwsTrace) -> Iterator[RunningBot]:
    """The bot (SQLite) with every AWS call going through the fault layer."""
    def session() -> boto3.session.Session:
        s = sandbox_world.proxied_session(faulty.url)
        hook(s, "before-parameter-build.*.*", aws_trace._before_call)
        return s

    running = start_bot(fake_slack, f"sqlite:///{tmp_path}/cordon.db",
                        approvers="S0ONCALL,U0ALEX", session_factory=session,
                        CORDON_LEASE_SECONDS="4")
    yield running
    running.stop()
    assert aws_trace.undeclared() == []


def settle(bot: RunningBot, incident_id: str, timeout: float = 60) -> Any:
    """Wait until the run has finished and Slack shows it: the card carries the final
    status (it is updated after the thread's last message is queued, and the queue is
    sent in order) and nothing is left to send."""
    from playbooks.store import FINAL_STATES
    from sandbox.harness import wait_for

    incident = wait_for(lambda: (i := bot.deps.store.get(incident_id)) is not None
                        and i.status in FINAL_STATES and i, timeout=timeout)
    wait_for(lambda: (m := bot.slack.fake.message(incident.channel_id, incident.card_ts or ""))
             is not None and m.text.endswith(incident.status) and not bot.deps.store.unsent(),
             timeout=20)
    return incident


def settle_card(bot: RunningBot, card_ts: str, timeout: float = 60) -> Any:
    """settle() for the incident whose card is at `card_ts`."""
    from sandbox.harness import wait_for

    incident = wait_for(lambda: next((i for i in bot.deps.store.recent()
                                      if i.card_ts == card_ts), None), timeout=timeout)
    return settle(bot, incident.id, timeout)


def approve_at_once(bot: RunningBot, ids: list[str], text: str, channel: str = "C0INCIDENT",
                    requester: str = "U0DANA", approver: str = "U0LEE") -> list[Any]:
    """One card per instance (`/contain <id> <text>`), then every card approved at once
    (threads clicking together); each incident once it has settled, in the cards' order."""
    import threading

    from sandbox.harness import wait_for

    for instance_id in ids:
        assert bot.slack.command(requester, channel, f"{instance_id} {text}")[0] == 200
    cards = wait_for(lambda: len(m := bot.slack.fake.channel_messages(channel)) == len(ids)
                     and m, timeout=90)
    # The cards are approvable once each has its full plan in the thread.
    wait_for(lambda: all((i.facts or {}).get("plan") != "pending"
                         for i in bot.deps.store.recent(len(ids))), timeout=60)
    clicks = [threading.Thread(target=bot.slack.click_button,
                               args=(approver, channel, card.ts, "Approve")) for card in cards]
    for t in clicks:
        t.start()
    for t in clicks:
        t.join()
    by_card = {i.card_ts: i.id for i in bot.deps.store.recent(len(ids))}
    return [settle(bot, by_card[card.ts], timeout=180) for card in cards]


FINDINGS = "C0FINDINGS"  # the alerts channel of the intake tests


@pytest.fixture
def queue(world: sandbox_world.World) -> str:
    sqs = aws_client("sqs")
    dlq = sqs.create_queue(QueueName="cordon-findings-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    # A message not deleted comes back after 2 s here (120 s as the template deploys it).
    return str(sqs.create_queue(QueueName="cordon-findings", Attributes={
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
        "VisibilityTimeout": "2",
    })["QueueUrl"])


@pytest.fixture
def intake_bot(fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
               aws_trace: AwsTrace, queue: str) -> Iterator[RunningBot]:
    running = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                        session_factory=aws_trace.session, CORDON_FINDINGS_QUEUE_URL=queue,
                        CORDON_FINDINGS_CHANNEL=FINDINGS)
    yield running
    running.stop()
    assert aws_trace.undeclared() == []


def policy_findings(policy: dict[str, Any]) -> list[tuple[str, str]]:
    """parliament's findings on a policy, less one kind its explicit denies answer: it
    flags a bucket-policy or ACL write as a way for Cordon to grant itself a bucket's
    objects, reading only the allows. Cordon's policy denies itself those very actions
    (NeverTheBucketsData), which no bucket policy overrides; each such finding is dropped
    only when the action it names is in a deny of the policy on every resource."""
    import json
    import re

    from parliament import analyze_policy_string

    denied = {a for st in policy.get("Statement", []) if st.get("Effect") == "Deny"
              and st.get("Resource") == "*" for a in st.get("Action", [])}
    kept = []
    for f in analyze_policy_string(json.dumps(policy)).findings:
        named = re.search(r"due to (\S+) not being allowed", str(f.detail))
        if f.issue == "RESOURCE_POLICY_PRIVILEGE_ESCALATION" and named \
                and named.group(1) in denied:
            continue
        kept.append((f.issue, str(f.detail)))
    return kept


@pytest.fixture
def leaked(world: Any) -> dict[str, str]:
    """An IAM user with console access, policies and two keys, one of which leaked."""
    client = aws_client("iam")
    client.create_user(UserName="deploy-bot")
    client.create_login_profile(UserName="deploy-bot", Password="Correct-Horse-9!")
    policy = client.create_policy(PolicyName="deploy", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*",
                                                "Resource": "*"}]}))
    client.attach_user_policy(UserName="deploy-bot", PolicyArn=policy["Policy"]["Arn"])
    client.put_user_policy(UserName="deploy-bot", PolicyName="ecr-push", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*",
                                                 "Resource": "*"}]}))
    first = client.create_access_key(UserName="deploy-bot")["AccessKey"]["AccessKeyId"]
    second = client.create_access_key(UserName="deploy-bot")["AccessKey"]["AccessKeyId"]
    return {"user": "deploy-bot", "key": first, "other": second}
