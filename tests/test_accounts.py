"""Several accounts and regions (a second moto account reached through sts AssumeRole:
moto keeps resources per account), and `python -m bot preflight`."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from handlers.aws import Clients
from handlers.ec2_lookup import AmbiguousTarget, find_instance
from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import SECRET, RunningBot, start_bot, wait_for
from tests.conftest import AwsTrace, aws_client, settle

ROOT = Path(__file__).resolve().parent.parent
PROD_ROLE = "arn:aws:iam::222222222222:role/CordonResponder"
OWN_ROLE = "arn:aws:iam::123456789012:role/CordonResponder"
CHANNEL = "C0INCIDENT"


def prod_session() -> boto3.session.Session:
    creds = aws_client("sts").assume_role(
        RoleArn=PROD_ROLE, RoleSessionName="test-setup")["Credentials"]
    return boto3.session.Session(aws_access_key_id=creds["AccessKeyId"],
                                 aws_secret_access_key=creds["SecretAccessKey"],
                                 aws_session_token=creds["SessionToken"])


@pytest.fixture
def prod_world(local_aws: sandbox_world.LocalAws) -> sandbox_world.World:
    local_aws.reset()
    sandbox_world.seed("us-east-1")  # something in Cordon's own account too
    return sandbox_world.seed("eu-west-1", session=prod_session())


@pytest.fixture
def bot(fake_slack: FakeSlack, prod_world: sandbox_world.World, e2e_database_url: str,
        aws_trace: AwsTrace) -> Any:
    running = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                        regions="us-east-1,eu-west-1", session_factory=aws_trace.session,
                        CORDON_ACCOUNTS=f"own={OWN_ROLE},prod={PROD_ROLE}")
    yield running
    running.stop()
    assert aws_trace.undeclared() == []


def test_containment_finds_the_instance_and_acts_in_its_account_as_the_approver(
        bot: RunningBot, prod_world: sandbox_world.World, fake_slack: FakeSlack,
        aws_trace: AwsTrace) -> None:
    bot.slack.command("U0DANA", CHANNEL, f"{prod_world.instance_id} isolate miner")
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    text = str(card.blocks)
    assert "prod (222222222222)" in text and "eu-west-1" in text
    bot.slack.click_button("U0LEE", CHANNEL, card.ts, "Approve")
    incident = settle(bot, bot.deps.store.recent()[0].id)
    assert incident.status == "contained", incident.summary
    # The change happened in the prod account, in eu-west-1.
    ec2 = prod_session().client("ec2", region_name="eu-west-1")
    inst = ec2.describe_instances(InstanceIds=[prod_world.instance_id])[
        "Reservations"][0]["Instances"][0]
    assert all([g["GroupName"] for g in e["Groups"]] == ["cordon-sealed"]
               for e in inst["NetworkInterfaces"])
    # In a role session named after the incident and the approver, who is its source identity.
    assumed = [p for op, p in aws_trace.calls if op == "AssumeRole"
               and p.get("SourceIdentity") == "U0LEE"]
    assert assumed and all(p["RoleArn"] == PROD_ROLE for p in assumed)
    assert assumed[0]["RoleSessionName"] == f"cordon-{incident.id}-U0LEE"
    # Credentials are cached: one AssumeRole for the whole run.
    assert len(assumed) == 1


def test_an_account_that_is_not_configured_is_refused(
        bot: RunningBot, prod_world: sandbox_world.World, fake_slack: FakeSlack) -> None:
    bot.slack.command("U0DANA", CHANNEL, f"{prod_world.instance_id} account=staging miner")
    assert "account `staging` is not configured" in wait_for(
        lambda: fake_slack.ephemerals_for("U0DANA"))[0]


def test_an_instance_id_found_in_two_places_is_refused_with_the_list() -> None:
    instance = {"InstanceId": "i-0123456789abcdef0", "State": {"Name": "running"}}
    reply = {"Reservations": [{"OwnerId": "1", "Instances": [instance]}]}

    def clients_for(place: tuple[str | None, str]) -> Clients:
        session = boto3.session.Session(region_name=place[1], aws_access_key_id="x",
                                        aws_secret_access_key="y")
        clients = Clients(region=place[1], session=session)
        ec2 = session.client("ec2", region_name=place[1], endpoint_url="https://ec2.test")
        stub = Stubber(ec2)
        stub.add_response("describe_instances", reply)
        stub.activate()
        clients._made["ec2"] = ec2
        return clients

    with pytest.raises(AmbiguousTarget) as err:
        find_instance(clients_for, "i-0123456789abcdef0",
                      [("prod", "eu-west-1"), ("staging", "eu-west-1")])
    assert err.value.places == [("prod", "eu-west-1"), ("staging", "eu-west-1")]


def _preflight(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m bot preflight` as a user runs it, in a process of its own."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CORDON_"))}
    return subprocess.run([sys.executable, "-m", "bot", "preflight"], cwd=cwd,
                          env={**base, "PYTHONPATH": str(ROOT), **env},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def preflight_here(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                   ) -> Callable[[dict[str, str], Path], subprocess.CompletedProcess[str]]:
    """The same command through its entry point in this process (what the process adds
    is checked once, above): the environment exactly `env`, as for the process."""
    from bot.__main__ import main

    def run(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
        with monkeypatch.context() as patch:
            patch.chdir(cwd)
            for name in [k for k in os.environ if k.startswith(("SLACK_", "CORDON_"))]:
                patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            code = main(["preflight"])
        out = capsys.readouterr()
        return subprocess.CompletedProcess(["preflight"], code, out.out, out.err)

    return run


def test_preflight_passes_against_moto_and_the_fake_slack(
        tmp_path: Path, prod_world: sandbox_world.World, fake_slack: FakeSlack,
        preflight_here: Callable[[dict[str, str], Path], subprocess.CompletedProcess[str]]
        ) -> None:
    db = f"sqlite:///{tmp_path}/cordon.db"  # a fresh database: preflight runs before serve
    env = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": SECRET,
           "SLACK_API_URL": fake_slack.api_url, "CORDON_DATABASE_URL": db,
           "CORDON_REGIONS": "us-east-1,eu-west-1",
           "CORDON_ACCOUNTS": f"own={OWN_ROLE},prod={PROD_ROLE}"}
    proc = _preflight(env, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert all(line.startswith("✅") for line in lines)
    for expected in ("Slack token", "Slack scopes", "Signing secret", "Database",
                     "account prod: role assumed", "prod/eu-west-1 ec2:CreateSecurityGroup"):
        assert any(expected in line for line in lines), expected
    assert any(line.startswith("✅ Database: reachable, created tables") for line in lines)
    again = preflight_here(env, tmp_path).stdout.splitlines()
    assert any(line.startswith("✅ Database: reachable, tables up to date") for line in again)
    # A bad token fails, with the fix; a missing one stops with one line.
    bad = preflight_here({**env, "SLACK_BOT_TOKEN": "xoxb-revoked"}, tmp_path)
    assert bad.returncode == 1
    assert any(line.startswith("❌ Slack token: Slack refused it (invalid_auth)")
               for line in bad.stdout.splitlines())
    missing = preflight_here({k: v for k, v in env.items() if k != "SLACK_BOT_TOKEN"}, tmp_path)
    assert missing.returncode == 2 and "SLACK_BOT_TOKEN is not set" in missing.stderr


def test_an_assumed_role_renews_itself_with_the_same_name_and_identity(
        prod_world: sandbox_world.World, aws_trace: AwsTrace) -> None:
    """botocore's refreshable credentials: when the role session nears its expiry, the
    next call assumes the role again — same session name, same source identity — and
    every role session reuses the models the pool already loaded."""
    from datetime import UTC, datetime, timedelta

    from handlers.aws import ClientPool

    pool = ClientPool(aws_trace.session, {"prod": PROD_ROLE})
    pool.warm(["eu-west-1"])
    clients = pool.for_region("eu-west-1", "prod", identity="U0LEE",
                              session_name="cordon-CRD-TEST01-U0LEE")
    clients.ec2.describe_instances(InstanceIds=[prod_world.instance_id])
    credentials = clients.session._session._credentials
    credentials._expiry_time = datetime.now(UTC) + timedelta(seconds=30)  # nearly gone
    clients.ec2.describe_instances(InstanceIds=[prod_world.instance_id])
    assumed = [p for op, p in aws_trace.calls if op == "AssumeRole"]
    assert len(assumed) == 2
    assert {(p["RoleSessionName"], p["SourceIdentity"]) for p in assumed} == {
        ("cordon-CRD-TEST01-U0LEE", "U0LEE")}
    loader = pool.base_session()._session.get_component("data_loader")
    assert clients.session._session.get_component("data_loader") is loader
    # The same incident and approver get the same session back; the cache is bounded.
    again = pool.for_region("eu-west-1", "prod", identity="U0LEE",
                            session_name="cordon-CRD-TEST01-U0LEE")
    assert again.session is clients.session
    assert pool._assumed.limit and pool._clients.limit


def _deploy_rules(template: dict[str, Any], region: str, target: str) -> None:
    """What CloudFormation makes of a template's EventBridge rules (moto has no stack
    deployment of rules with these targets): each rule, described and patterned as the
    template says, sending to `target`."""
    import json

    events = aws_client("events", region)
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Events::Rule":
            continue
        props = resource["Properties"]
        events.put_rule(Name=f"stack-{name}", Description=props["Description"],
                        EventPattern=json.dumps(props["EventPattern"]), State=props["State"])
        events.put_targets(Rule=f"stack-{name}", Targets=[{"Id": "target", "Arn": target}])


def test_preflight_checks_the_findings_queue_and_its_dead_letter_queue(
        tmp_path: Path, prod_world: sandbox_world.World, fake_slack: FakeSlack,
        preflight_here: Callable[[dict[str, str], Path], subprocess.CompletedProcess[str]]
        ) -> None:
    """The queue, its dead-letter queue, and the rules of every region that feed it."""
    import json

    from playbooks.template import central_template, forwarding_template

    sqs = aws_client("sqs")
    bare = sqs.create_queue(QueueName="findings-bare")["QueueUrl"]
    dlq = sqs.create_queue(QueueName="findings-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    good = sqs.create_queue(QueueName="findings", Attributes={"RedrivePolicy": json.dumps(
        {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"})})["QueueUrl"]
    env = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": SECRET,
           "SLACK_API_URL": fake_slack.api_url, "CORDON_DATABASE_URL":
           f"sqlite:///{tmp_path}/cordon.db", "CORDON_FINDINGS_CHANNEL": "C0FINDINGS",
           "CORDON_REGIONS": "us-east-1,eu-west-1"}
    ok = preflight_here({**env, "CORDON_FINDINGS_QUEUE_URL": good}, tmp_path)
    assert any(line.startswith("✅ Findings queue:") and "dead-letter" in line
               for line in ok.stdout.splitlines()), ok.stdout
    # No stack's rules yet: neither region feeds the queue, and each is told what to deploy.
    lines = ok.stdout.splitlines()
    assert "❌ EventBridge rules us-east-1: 0 of Cordon's 3 rules send findings to the " \
           "queue — deploy the central stack (`make template`) here" in lines, ok.stdout
    assert any(line.startswith("❌ EventBridge rules eu-west-1: 0 of Cordon's 3 rules send "
                               "findings to us-east-1's event bus — deploy the forwarding "
                               "stack") and "CentralRegion=us-east-1" in line for line in lines)
    queue_arn = sqs.get_queue_attributes(QueueUrl=good, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    _deploy_rules(central_template(), "us-east-1", queue_arn)
    _deploy_rules(forwarding_template(), "eu-west-1",
                  "arn:aws:events:us-east-1:123456789012:event-bus/default")
    fed = preflight_here({**env, "CORDON_FINDINGS_QUEUE_URL": good}, tmp_path)
    assert fed.returncode == 0, fed.stdout
    assert "✅ EventBridge rules us-east-1: 3 of Cordon's 3 rules send findings to the " \
           "queue" in fed.stdout.splitlines()
    assert "✅ EventBridge rules eu-west-1: 3 of Cordon's 3 rules send findings to " \
           "us-east-1's event bus" in fed.stdout.splitlines()
    bad = preflight_here({**env, "CORDON_FINDINGS_QUEUE_URL": bare}, tmp_path)
    assert bad.returncode == 1
    assert any(line.startswith("❌ Findings queue:") and "no dead-letter queue" in line
               for line in bad.stdout.splitlines()), bad.stdout
    no_channel = preflight_here({k: v for k, v in env.items()
                                 if k != "CORDON_FINDINGS_CHANNEL"}
                                | {"CORDON_FINDINGS_QUEUE_URL": good}, tmp_path)
    assert no_channel.returncode == 2 and "CORDON_FINDINGS_CHANNEL must" in no_channel.stderr


def test_preflight_tells_a_network_failure_from_a_refused_token(
        tmp_path: Path, prod_world: sandbox_world.World,
        preflight_here: Callable[[dict[str, str], Path], subprocess.CompletedProcess[str]]
        ) -> None:
    """Slack unreachable: said so, and the token not blamed (a refused token: above)."""
    from tests.test_cli import free_port

    closed = f"http://127.0.0.1:{free_port()}/api/"  # nothing listens there
    down = preflight_here({"SLACK_SIGNING_SECRET": SECRET, "SLACK_BOT_TOKEN": "xoxb-test",
                       "SLACK_API_URL": closed,
                       "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/cordon.db"}, tmp_path)
    (slack,) = [line for line in down.stdout.splitlines() if "Slack" in line]
    assert slack.startswith("❌ Slack: unreachable at " + closed) and "token was not" in slack
