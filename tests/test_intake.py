"""From alert to card: EventBridge events (GuardDuty, Security Hub, a `cordon:contain`
tag) in moto's SQS, through the real consumer running beside the bot's endpoint, to
cards in the findings channel — and an approval that runs the containment. Judged by
the queue, the channel, the thread and the database."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, start_bot, wait_for
from tests.conftest import FINDINGS, AwsTrace, aws_client, settle_card
from tests.test_cli import free_port

LEE, DANA = "U0LEE", "U0DANA"
ACCOUNT = "123456789012"


def guardduty(instance_id: str, severity: float = 8, finding_id: str = "6ab0a9c8e2b4c1d7",
              kind: str = "Instance", key_id: str = "", count: int = 3,
              archived: bool = False, sample: bool = False) -> dict[str, Any]:
    """The shape of a GuardDuty finding as EventBridge delivers it (AWS's sample
    findings: Backdoor:EC2/C&CActivity.B!DNS, and an IAM user's key used from outside)."""
    resource: dict[str, Any] = {"resourceType": kind}
    if kind == "Instance":
        resource["instanceDetails"] = {
            "instanceId": instance_id, "instanceType": "t3.large", "instanceState": "running",
            "availabilityZone": "us-east-1a", "imageId": "ami-0123456789abcdef0",
            "networkInterfaces": [{"privateIpAddress": "10.20.1.4", "subnetId": "subnet-1",
                                   "vpcId": "vpc-1", "securityGroups": []}],
            "tags": [{"key": "Name", "value": "web-prod-3"}]}
        ftype, title = ("Backdoor:EC2/C&CActivity.B!DNS",
                        f"Command and Control server domain name queried by EC2 instance "
                        f"{instance_id}.")
    else:
        resource["accessKeyDetails"] = {"accessKeyId": key_id, "principalId": "AIDAEXAMPLE",
                                        "userName": "deploy-bot", "userType": "IAMUser"}
        ftype, title = ("UnauthorizedAccess:IAMUser/MaliciousIPCaller.Custom",
                        "API GetCallerIdentity was invoked from an IP address on a custom "
                        "threat list.")
    return {
        "version": "0", "id": f"evt-{finding_id}", "detail-type": "GuardDuty Finding",
        "source": "aws.guardduty", "account": ACCOUNT, "time": "2026-11-27T10:00:00Z",
        "region": "us-east-1", "resources": [],
        "detail": {
            "schemaVersion": "2.0", "accountId": ACCOUNT, "region": "us-east-1",
            "partition": "aws", "id": finding_id,
            "arn": f"arn:aws:guardduty:us-east-1:{ACCOUNT}:detector/12abc34d/finding/"
                   f"{finding_id}",
            "type": ftype, "resource": resource, "severity": severity,
            "service": {"serviceName": "guardduty", "detectorId": "12abc34d", "count": count,
                        "archived": archived, "eventFirstSeen": "2026-11-27T09:41:02.000Z",
                        **({"additionalInfo": {"sample": True}} if sample else {}),
                        "eventLastSeen": "2026-11-27T09:58:40.000Z",
                        "action": {"actionType": "DNS_REQUEST",
                                   "dnsRequestAction": {"domain": "c2.example.com"}}},
            "createdAt": "2026-11-27T09:41:02.000Z", "updatedAt": "2026-11-27T09:58:40.000Z",
            "title": title, "description": title}}


PRODUCTS = {
    # Security Hub's ProductName and ProductArn suffix, and a finding id of each product.
    "GuardDuty": ("aws/guardduty", f"arn:aws:guardduty:us-east-1:{ACCOUNT}:detector/12abc34d/"
                                   "finding/{id}"),
    "Inspector": ("aws/inspector", f"arn:aws:inspector2:us-east-1:{ACCOUNT}:finding/{{id}}"),
    "Security Hub": ("aws/securityhub", f"arn:aws:securityhub:us-east-1:{ACCOUNT}:subscription/"
                                        "aws-foundational-security-best-practices/v/1.0.0/"
                                        "EC2.8/finding/{id}"),
}


def security_hub(instance_id: str, label: str = "HIGH", finding_id: str = "9e1b2c3d4e5f6a7b",
                 product: str = "GuardDuty", workflow: str = "NEW", record: str = "ACTIVE",
                 sample: bool = False) -> dict[str, Any]:
    """A Security Hub finding (ASFF) as EventBridge delivers it; from GuardDuty unless
    `product` says otherwise."""
    arn_suffix, id_format = PRODUCTS[product]
    fid = id_format.replace("{id}", finding_id)
    return {
        "version": "0", "id": "evt-sh-1", "detail-type": "Security Hub Findings - Imported",
        "source": "aws.securityhub", "account": ACCOUNT, "time": "2026-11-27T10:05:00Z",
        "region": "us-east-1", "resources": [fid],
        "detail": {"findings": [{
            "SchemaVersion": "2018-10-08", "Id": fid,
            "ProductArn": f"arn:aws:securityhub:us-east-1::product/{arn_suffix}",
            "ProductName": product, "CompanyName": "AWS",
            "GeneratorId": f"{product} generator",
            "AwsAccountId": ACCOUNT, "Region": "us-east-1",
            "Types": ["TTPs/Command and Control/Backdoor:EC2-C&CActivity.B!DNS"],
            "FirstObservedAt": "2026-11-27T09:41:02.000Z",
            "LastObservedAt": "2026-11-27T10:04:00.000Z",
            "CreatedAt": "2026-11-27T09:41:02.000Z", "UpdatedAt": "2026-11-27T10:04:00.000Z",
            "Severity": {"Label": label, "Normalized": 70},
            "Title": "EC2 instance is querying a domain name associated with C2",
            "Description": "…",
            "Resources": [{"Type": "AwsEc2Instance", "Partition": "aws",
                           "Region": "us-east-1",
                           "Id": f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{instance_id}"}],
            "RecordState": record, "Workflow": {"Status": workflow},
            **({"Sample": True} if sample else {})}]}}


def tag_change(instance_id: str, value: str) -> dict[str, Any]:
    return {
        "version": "0", "id": "evt-tag-1", "detail-type": "Tag Change on Resource",
        "source": "aws.tag", "account": ACCOUNT, "time": "2026-11-27T10:10:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/{instance_id}"],
        "detail": {"changed-tag-keys": ["cordon:contain"], "service": "ec2",
                   "resource-type": "instance", "version": 3,
                   "tags": {"Name": "web-prod-3", "cordon:contain": value}}}


def send(queue: str, event: dict[str, Any] | str) -> None:
    body = event if isinstance(event, str) else json.dumps(event)
    aws_client("sqs").send_message(QueueUrl=queue, MessageBody=body)


def empty(queue: str) -> bool:
    attrs = aws_client("sqs").get_queue_attributes(QueueUrl=queue, AttributeNames=[
        "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
    return attrs == {"ApproximateNumberOfMessages": "0",
                     "ApproximateNumberOfMessagesNotVisible": "0"}


def cards(fake: FakeSlack) -> list[Any]:
    return [m for m in fake.channel_messages(FINDINGS) if m.blocks]


def approve(bot: RunningBot, card: Any) -> None:
    """An approver's click, once the message is recorded as the card (the record follows
    Slack's answer to the post; a click before it would rightly be refused)."""
    wait_for(lambda: any(i.card_ts == card.ts for i in bot.deps.store.recent()), timeout=30)
    bot.slack.click_button(LEE, FINDINGS, card.ts, "Approve")


def text_of(blocks: list[dict[str, Any]]) -> str:
    return json.dumps(blocks, ensure_ascii=False)


def test_a_guardduty_finding_becomes_one_proposed_card_that_an_approver_runs(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    before = sandbox_world.groups_by_eni(world.instance_id)
    send(queue, guardduty(world.instance_id))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    wait_for(lambda: empty(queue), timeout=30)
    shown = text_of(card.blocks)
    assert "Proposed by GuardDuty" in shown and "Backdoor:EC2/C&amp;CActivity.B!DNS" in shown
    assert "severity 8 (HIGH)" in shown and "First seen 2026-11-27T09:41:02.000Z" in shown
    assert "fId=6ab0a9c8e2b4c1d7" in shown and "GuardDuty (alert)" in shown
    (incident,) = intake_bot.deps.store.recent()
    assert incident.target_id == world.instance_id and incident.playbook == "full"
    assert incident.requester == "GuardDuty" and incident.status == "pending"
    assert sandbox_world.groups_by_eni(world.instance_id) == before  # nothing before approval
    # Any approver may approve it.
    approve(intake_bot, card)
    done = settle_card(intake_bot, card.ts)
    assert done.status == "contained"
    assert all(v[0].startswith("cordon-sealed") and len(v) == 1
               for v in sandbox_world.groups_by_eni(world.instance_id).values())
    # `/contain status` says where the request came from.
    intake_bot.slack.command(DANA, "C0INCIDENT", f"status {incident.id}")
    said = wait_for(lambda: fake_slack.ephemerals_for(DANA))[-1]
    assert "Asked by GuardDuty (alert)" in said


def test_repeated_findings_about_one_resource_make_one_card_and_notes_in_its_thread(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    send(queue, guardduty(world.instance_id))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    send(queue, guardduty(world.instance_id))  # the same finding again
    send(queue, security_hub(world.instance_id))  # another finding, same instance
    wait_for(lambda: empty(queue), timeout=30)
    notes = wait_for(lambda: [m.text for m in fake_slack.thread(FINDINGS, card.ts)
                              if "Another" in m.text], timeout=30)
    assert len(cards(fake_slack)) == 1
    assert len(notes) == 1 and "Another Security Hub finding" in notes[0]
    (incident,) = intake_bot.deps.store.recent()
    assert len(incident.facts["findings"]) == 2


def test_below_the_minimum_severity_nothing_is_proposed(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    send(queue, guardduty(world.instance_id, severity=2.0))
    send(queue, security_hub(world.instance_id, label="LOW"))
    wait_for(lambda: empty(queue), timeout=30)
    assert cards(fake_slack) == [] and intake_bot.deps.store.recent() == []


def test_malformed_and_unknown_messages_are_dropped_and_the_next_is_handled(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    send(queue, "not json at all")
    send(queue, {"source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification",
                 "detail": {"instance-id": world.instance_id, "state": "running"}})
    broken = guardduty(world.instance_id)
    del broken["detail"]["resource"]
    send(queue, broken)
    send(queue, tag_change(world.instance_id, "crypto-miner seen by the SOC <!channel>"))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    wait_for(lambda: empty(queue), timeout=30)
    (incident,) = intake_bot.deps.store.recent()
    assert incident.reason == "crypto-miner seen by the SOC <!channel>"
    assert "Proposed by tag cordon:contain" in text_of(card.blocks)
    assert "&lt;!channel&gt;" in text_of(card.blocks)


def test_a_crash_before_the_delete_delivers_again_and_still_makes_one_card(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str, aws_trace: AwsTrace) -> None:
    # The card is made, then every try to delete the message fails (botocore's own six
    # attempts): as if the process died right after storing the request.
    aws_trace.fail("DeleteMessage", "InternalError", "injected", times=6, status=500)
    send(queue, guardduty(world.instance_id))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    # Delivered again after the visibility timeout: recognised, deleted, no second card.
    wait_for(lambda: aws_trace.count("ReceiveMessage") and empty(queue), timeout=60)
    assert aws_trace.count("DeleteMessage") >= 2  # the first failed (with its retries)
    assert len(cards(fake_slack)) == 1 and len(intake_bot.deps.store.recent()) == 1
    assert [m for m in fake_slack.thread(FINDINGS, card.ts) if "Another" in m.text] == []


def test_a_guardduty_key_finding_proposes_the_key_playbook(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    user, key = sandbox_world.seed_leaked_key(world)
    send(queue, guardduty("", kind="AccessKey", key_id=key, finding_id="k3y"))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    wait_for(lambda: empty(queue), timeout=30)
    (incident,) = intake_bot.deps.store.recent()
    assert incident.kind == "key" and incident.target_id == key
    assert "Proposed by GuardDuty" in text_of(card.blocks)
    approve(intake_bot, card)
    assert settle_card(intake_bot, card.ts).status == "contained"
    assert sandbox_world.key_status(user, key) == "Inactive"


def test_an_instance_credential_exfiltration_finding_proposes_full_on_that_instance(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    """The instance role's credentials used outside AWS: the finding names a temporary key
    and the session `AROA…:i-…`. The instance is proposed (its revocation is scoped to it),
    not a role-wide revocation that would deny every instance sharing the role."""
    event = guardduty("", kind="AccessKey", key_id="ASIAQEXFILTRATED0001", finding_id="exf1")
    event["detail"]["type"] = "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS"
    event["detail"]["resource"]["accessKeyDetails"].update(
        principalId=f"AROAEXAMPLEROLEID0001:{world.instance_id}", userName="web-prod",
        userType="AssumedRole")
    send(queue, event)
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    wait_for(lambda: empty(queue), timeout=30)
    (incident,) = intake_bot.deps.store.recent()
    assert incident.kind == "instance" and incident.target_id == world.instance_id
    assert incident.playbook == "full"
    assert "InstanceCredentialExfiltration" in text_of(card.blocks)
    approve(intake_bot, card)
    assert settle_card(intake_bot, card.ts).status == "contained"
    (statement,) = aws_client("iam").get_role_policy(
        RoleName="web-prod", PolicyName="cordon-revocations")["PolicyDocument"]["Statement"]
    assert statement["Condition"]["StringEquals"]["ec2:SourceInstanceARN"].endswith(
        world.instance_id)
    assert aws_client("iam").list_role_policies(RoleName="web-prod")["PolicyNames"] == [
        "cordon-revocations"]  # no role-wide AWSRevokeOlderSessions


def test_a_finding_about_an_instance_that_is_not_there_is_said_in_the_channel(
        intake_bot: RunningBot, fake_slack: FakeSlack, queue: str) -> None:
    send(queue, guardduty("i-0123456789abcdef0", finding_id="gone"))
    said = wait_for(lambda: [m.text for m in fake_slack.channel_messages(FINDINGS)], timeout=30)
    wait_for(lambda: empty(queue), timeout=30)
    assert "i-0123456789abcdef0" in said[0] and "No card was made" in said[0]
    assert intake_bot.deps.store.recent() == []


def test_two_replicas_make_one_card_for_findings_about_one_instance(
        fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
        aws_trace: AwsTrace, queue: str) -> None:
    """Two `serve` replicas on one PostgreSQL database read one queue; six findings about
    one instance arrive at once. The replicas take turns on the instance (an advisory
    lock in PostgreSQL): one card, five notes."""
    if not e2e_database_url.startswith("postgresql"):
        pytest.skip("several replicas share a PostgreSQL database")
    first = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                      session_factory=aws_trace.session, CORDON_FINDINGS_QUEUE_URL=queue,
                      CORDON_FINDINGS_CHANNEL=FINDINGS, CORDON_WORKER_ID="replica-a")
    second = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                       session_factory=aws_trace.session, CORDON_FINDINGS_QUEUE_URL=queue,
                       CORDON_FINDINGS_CHANNEL=FINDINGS, CORDON_WORKER_ID="replica-b")
    try:
        for n in range(6):
            send(queue, guardduty(world.instance_id, finding_id=f"f{n}"))
        wait_for(lambda: empty(queue), timeout=60)
        (card,) = cards(fake_slack)
        (incident,) = first.deps.store.recent()
        assert sorted(incident.facts["findings"]) == [f"f{n}" for n in range(6)]
        notes = wait_for(lambda: len([m for m in fake_slack.thread(FINDINGS, card.ts)
                                      if "Another" in m.text]) == 5, timeout=30)
        assert notes
    finally:
        first.stop()
        second.stop()
    assert aws_trace.undeclared() == []


def test_kill_9_after_the_card_and_before_the_delete_still_makes_one_card(
        tmp_path: Any, local_aws: sandbox_world.LocalAws, world: sandbox_world.World,
        fake_slack: FakeSlack, faulty: Any, queue: str) -> None:
    """A `serve` process killed (SIGKILL) once its proposed card is posted, its delete of
    the message on the wire (held by the fault layer, never reaching SQS): the restarted
    process gets the message again and makes no second card and no note."""
    from tests.test_failsafe import _serve, _stop

    port = free_port()
    db = f"sqlite:///{tmp_path}/cordon.db"
    faulty.add("DeleteMessage", "hold", times=-1)
    intake = {"CORDON_FINDINGS_QUEUE_URL": queue, "CORDON_FINDINGS_CHANNEL": FINDINGS}
    first = _serve(tmp_path, local_aws, faulty, fake_slack, port, db, "first", **intake)
    try:
        send(queue, guardduty(world.instance_id))
        (card,) = wait_for(lambda: cards(fake_slack), timeout=60)
        assert faulty.wait_held(1)
        first.kill()
        first.wait(timeout=10)
    finally:
        _stop(first)
    faulty.release()  # the dead process's delete never reaches SQS
    assert not empty(queue)
    second = _serve(tmp_path, local_aws, faulty, fake_slack, port, db, "second", **intake)
    try:
        wait_for(lambda: empty(queue), timeout=60)
    finally:
        _stop(second)
    assert len(cards(fake_slack)) == 1
    assert [m for m in fake_slack.thread(FINDINGS, card.ts) if "Another" in m.text] == []
    receipts = faulty.calls("ReceiveMessage")
    deletes = faulty.calls("DeleteMessage")
    assert len(deletes) == 2 and len(receipts) >= 2  # one held and lost, one that landed


def _handled(bot: RunningBot, queue: str) -> None:
    """Every message sent so far read, handled and deleted (what the consumer does last)."""
    wait_for(lambda: empty(queue), timeout=30)


def test_findings_from_other_products_or_closed_make_no_card(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    """An Inspector CVE, a Security Hub control's HIGH finding, suppressed, resolved and
    archived findings, an archived GuardDuty finding: none is a decision for a person.
    Then an active GuardDuty finding: it makes the one card (the consumer was reading)."""
    for event in (security_hub(world.instance_id, product="Inspector", finding_id="cve-1"),
                  security_hub(world.instance_id, product="Security Hub", finding_id="ec2-8"),
                  security_hub(world.instance_id, workflow="SUPPRESSED", finding_id="s1"),
                  security_hub(world.instance_id, workflow="RESOLVED", finding_id="s2"),
                  security_hub(world.instance_id, record="ARCHIVED", finding_id="s3"),
                  guardduty(world.instance_id, finding_id="gd-archived", archived=True)):
        send(queue, event)
    _handled(intake_bot, queue)
    send(queue, guardduty(world.instance_id, finding_id="gd-active"))
    wait_for(lambda: cards(fake_slack), timeout=30)
    _handled(intake_bot, queue)
    (incident,) = intake_bot.deps.store.recent()
    assert incident.facts["findings"] == ["gd-active"]
    assert len(cards(fake_slack)) == 1


def test_the_products_are_a_setting(
        fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
        aws_trace: AwsTrace, queue: str) -> None:
    bot = start_bot(fake_slack, e2e_database_url, approvers="S0ONCALL",
                    session_factory=aws_trace.session, CORDON_FINDINGS_QUEUE_URL=queue,
                    CORDON_FINDINGS_CHANNEL=FINDINGS,
                    CORDON_FINDINGS_PRODUCTS="GuardDuty, inspector")
    try:
        send(queue, security_hub(world.instance_id, product="Inspector", finding_id="cve-1"))
        (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
        assert "Proposed by Security Hub" in text_of(card.blocks)
    finally:
        bot.stop()


def test_updates_of_a_finding_about_a_contained_instance_make_one_note_and_no_card(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    """GuardDuty keeps updating a finding about an instance already contained (its DNS
    goes through the resolver): five updates are one note in the thread, kept current,
    never a second card with new snapshots. The same finding forwarded by Security Hub is
    the same finding."""
    send(queue, guardduty(world.instance_id, count=3))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    approve(intake_bot, card)
    assert settle_card(intake_bot, card.ts).status == "contained"
    for count in range(4, 9):
        send(queue, guardduty(world.instance_id, count=count))
    send(queue, security_hub(world.instance_id, finding_id="6ab0a9c8e2b4c1d7"))

    def notes() -> list[str]:
        return [m.text for m in fake_slack.thread(FINDINGS, card.ts)
                if "finding behind this card" in m.text or "Another" in m.text]

    wait_for(lambda: any("seen 8 times" in n for n in notes()), timeout=60)
    _handled(intake_bot, queue)
    intake_bot.deps.timeline.flush()
    assert len(notes()) == 1 and "seen 8 times" in notes()[0]
    assert len(cards(fake_slack)) == 1
    (incident,) = intake_bot.deps.store.recent()
    assert incident.facts["findings"] == ["6ab0a9c8e2b4c1d7"]
    assert incident.facts["finding_counts"] == {"6ab0a9c8e2b4c1d7": 8}
    images = aws_client("ec2").describe_images(Owners=["self"], Filters=[
        {"Name": "tag:cordon:incident", "Values": [incident.id]}])["Images"]
    assert len(images) == 1


def test_after_a_release_the_same_finding_proposes_again_only_if_its_severity_rose(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    send(queue, guardduty(world.instance_id, severity=5, count=3))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    approve(intake_bot, card)
    contained = settle_card(intake_bot, card.ts)
    intake_bot.slack.command(DANA, FINDINGS, f"release {contained.id} false positive")
    release_card = wait_for(lambda: cards(fake_slack)[1:], timeout=30)[0]
    approve(intake_bot, release_card)
    assert settle_card(intake_bot, release_card.ts).status == "released"
    send(queue, guardduty(world.instance_id, severity=5, count=9))  # an update, same severity
    _handled(intake_bot, queue)
    assert len(cards(fake_slack)) == 2
    assert [i.kind for i in intake_bot.deps.store.recent()] == ["release", "instance"]
    send(queue, guardduty(world.instance_id, severity=8, count=12))  # it rose
    third = wait_for(lambda: cards(fake_slack)[2:], timeout=30)[0]
    assert "Proposed by GuardDuty" in text_of(third.blocks) and "severity 8" in text_of(
        third.blocks)


def test_a_sample_finding_is_marked_on_its_card(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    send(queue, guardduty(world.instance_id, sample=True))
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    assert "Sample finding" in text_of(card.blocks)


def test_a_finding_about_a_contained_fleet_member_is_a_note_in_its_fleets_thread(
        intake_bot: RunningBot, world: sandbox_world.World, fake_slack: FakeSlack,
        queue: str) -> None:
    """A fleet member has no card of its own: a finding about it, once it is contained,
    goes to its fleet's thread (kept current there), never a new card."""
    more = sandbox_world.add_instances(world, 1, name="web-prod")
    assert intake_bot.slack.command(DANA, FINDINGS, f"{world.instance_id} {more[0]} isolate "
                                                    "worm")[0] == 200
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    approve(intake_bot, card)
    assert settle_card(intake_bot, card.ts, timeout=120).status == "contained"
    send(queue, guardduty(more[0], finding_id="member-1", count=4))
    send(queue, guardduty(more[0], finding_id="member-1", count=5))

    def notes() -> list[str]:
        return [m.text for m in fake_slack.thread(FINDINGS, card.ts) if "Another" in m.text]

    wait_for(lambda: any("seen 5 times" in n for n in notes()), timeout=60)
    _handled(intake_bot, queue)
    intake_bot.deps.timeline.flush()
    assert len(notes()) == 1 and more[0] in notes()[0]
    assert len(cards(fake_slack)) == 1
    assert intake_bot.deps.store.unsent() == []


def test_a_stop_during_a_long_poll_does_not_wait_for_it_and_handles_nothing_after(
        fake_slack: FakeSlack, world: sandbox_world.World, e2e_database_url: str,
        aws_trace: AwsTrace, queue: str) -> None:
    """`serve` stopping while its consumer waits on SQS's 20-second long poll: the stop
    returns with the poll still open, and a message that poll then returns is left in
    the queue (delivered again after its visibility timeout), not turned into a card by
    a process that is going away."""
    from bot.intake import IntakeThread

    running = start_bot(fake_slack, e2e_database_url, session_factory=aws_trace.session,
                        CORDON_FINDINGS_QUEUE_URL=queue, CORDON_FINDINGS_CHANNEL=FINDINGS)
    try:
        assert running.intake is not None
        running.intake.stop()  # the test's short-polling consumer
        polls = len([c for c in aws_trace.calls if c[0] == "ReceiveMessage"])
        consumer = IntakeThread(running.intake.intake, wait_seconds=20).start()
        wait_for(lambda: len([c for c in aws_trace.calls if c[0] == "ReceiveMessage"])
                 > polls)
        consumer.stop()
        assert consumer.thread.is_alive()  # still in the poll: the stop did not wait
        send(queue, guardduty(world.instance_id))
        wait_for(lambda: not consumer.thread.is_alive(), timeout=30)  # the poll returned
        assert not empty(queue)
        assert [c for c in aws_trace.calls if c[0] == "DeleteMessage"] == []
        assert cards(fake_slack) == []
    finally:
        running.stop()
