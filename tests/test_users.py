"""A compromised IAM user, end to end through the real HTTP endpoint against moto's
server: every credential cut, the card a dry run, and a release that puts back exactly
what was active. moto evaluates no policy: the session deny is checked as a document."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from sandbox.fake_slack import FakeSlack
from sandbox.harness import RunningBot, wait_for
from tests.conftest import aws_client
from tests.test_intake import approve as approve_finding
from tests.test_intake import cards, guardduty, send, text_of
from tests.test_keys import CHANNEL, DANA, approve, request, thread

USER = "build-agent"
ARN = f"arn:aws:iam::123456789012:user/ci/{USER}"


def _certificate_and_ssh_key() -> tuple[str, str]:
    """A self-signed certificate and an OpenSSH public key, made here (IAM checks both)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, USER)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + timedelta(days=30))
            .sign(key, hashes.SHA256()))
    ssh = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    return cert.public_bytes(serialization.Encoding.PEM).decode(), ssh.decode()


def iam() -> Any:
    return aws_client("iam")


@pytest.fixture
def user(world: Any) -> dict[str, str]:
    """A user with an active and an inactive key, a console password, a signing
    certificate, an SSH key, an MFA device, a group and a policy."""
    client = iam()
    client.create_user(UserName=USER, Path="/ci/")
    client.create_login_profile(UserName=USER, Password="Correct-Horse-9!")
    active = client.create_access_key(UserName=USER)["AccessKey"]["AccessKeyId"]
    inactive = client.create_access_key(UserName=USER)["AccessKey"]["AccessKeyId"]
    client.update_access_key(UserName=USER, AccessKeyId=inactive, Status="Inactive")
    certificate, ssh_key = _certificate_and_ssh_key()
    cert = client.upload_signing_certificate(UserName=USER, CertificateBody=certificate)[
        "Certificate"]["CertificateId"]
    ssh = client.upload_ssh_public_key(UserName=USER, SSHPublicKeyBody=ssh_key)[
        "SSHPublicKey"]["SSHPublicKeyId"]
    device = client.create_virtual_mfa_device(VirtualMFADeviceName=USER)[
        "VirtualMFADevice"]["SerialNumber"]
    client.enable_mfa_device(UserName=USER, SerialNumber=device, AuthenticationCode1="123456",
                             AuthenticationCode2="654321")
    client.create_group(GroupName="builders")
    client.add_user_to_group(GroupName="builders", UserName=USER)
    client.put_user_policy(UserName=USER, PolicyName="push", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecr:*",
                                                "Resource": "*"}]}))
    return {"active": active, "inactive": inactive, "cert": cert, "ssh": ssh,
            "mfa": device}


def statuses() -> dict[str, str]:
    client = iam()
    found = {k["AccessKeyId"]: k["Status"] for k in
             client.list_access_keys(UserName=USER)["AccessKeyMetadata"]}
    found |= {c["CertificateId"]: c["Status"] for c in
              client.list_signing_certificates(UserName=USER)["Certificates"]}
    found |= {k["SSHPublicKeyId"]: k["Status"] for k in
              client.list_ssh_public_keys(UserName=USER)["SSHPublicKeys"]}
    return found


def test_a_user_is_cut_everywhere_and_released_to_exactly_what_was_active(
        bot: RunningBot, user: dict[str, str], fake_slack: FakeSlack) -> None:
    before = statuses()
    card = request(bot, f"{ARN} credentials in a build log <!here>")
    shown = json.dumps(card.blocks, ensure_ascii=False)
    # The card is a dry run: each change with its value now and after; what is only
    # listed (MFA, groups, policies) is listed.
    for expected in (f"access key {user['active']}: Active → Inactive",
                     f"access key {user['inactive']}: Inactive → Inactive",
                     "console password: set → deleted (cannot be put back)",
                     f"signing certificate {user['cert']}: Active → Inactive",
                     f"SSH key {user['ssh']}: Active → Inactive", user["mfa"], "builders",
                     "push", "service-specific credentials: not readable now", "&lt;!here&gt;"):
        assert expected in shown, expected
    incident = approve(bot, card)
    assert incident.kind == "user" and incident.status == "partially contained", \
        incident.summary  # moto cannot list service-specific credentials: said, not hidden
    assert set(statuses().values()) == {"Inactive"}
    with pytest.raises(ClientError, match="NoSuchEntity"):
        iam().get_login_profile(UserName=USER)
    deny = iam().get_user_policy(UserName=USER, PolicyName="cordon-revoke-sessions")[
        "PolicyDocument"]
    assert "aws:TokenIssueTime" in json.dumps(deny)
    said = " ".join(thread(fake_slack, card))
    assert "service-specific credentials could not be listed" in said
    # The user as it was at the cut, MFA devices, groups and policies included: evidence.
    (record,) = bot.deps.store.evidence(incident.id)
    recorded = json.loads(record.content)
    assert recorded["mfa_devices"] == [user["mfa"]] and recorded["groups"] == ["builders"]
    assert record.sha256
    # MFA devices, groups and policies are left as they were.
    assert iam().list_mfa_devices(UserName=USER)["MFADevices"]
    assert iam().list_groups_for_user(UserName=USER)["Groups"]

    release_card = request(bot, f"release {incident.id} rebuilt the agent")
    released = approve(bot, release_card)
    assert released.status == "released", released.summary
    assert statuses() == before  # the inactive key stays inactive
    assert "cordon-revoke-sessions" in iam().list_user_policies(UserName=USER)["PolicyNames"]
    replies = " ".join(thread(fake_slack, release_card))
    assert "re-create it" in replies  # the password cannot come back by itself


def test_a_user_that_does_not_exist_is_told_and_nothing_is_made(
        bot: RunningBot, world: Any, fake_slack: FakeSlack) -> None:
    bot.slack.command(DANA, CHANNEL, "user nobody-here leaked")
    reply = wait_for(lambda: fake_slack.ephemerals_for(DANA))[0]
    assert "no IAM user nobody-here" in reply
    assert bot.deps.store.recent() == []
    assert fake_slack.channel_messages(CHANNEL) == []


def test_a_guardduty_finding_about_a_user_with_no_key_proposes_the_user_playbook(
        intake_bot: RunningBot, user: dict[str, str], fake_slack: FakeSlack,
        queue: str) -> None:
    """An IAM user's console sign-in finding names no access key: the user is proposed,
    through the real consumer on moto SQS; approved, its credentials are cut."""
    event = guardduty("", kind="AccessKey", finding_id="user-console-1")
    details = event["detail"]["resource"]["accessKeyDetails"]
    details.update(userName=USER, accessKeyId="")
    event["detail"]["type"] = "UnauthorizedAccess:IAMUser/ConsoleLoginSuccess.B"
    send(queue, event)
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    assert "IAM user proposed" in text_of(card.blocks)
    (incident,) = intake_bot.deps.store.recent()
    assert incident.playbook == "user" and incident.target_id == \
        f"arn:aws:iam::123456789012:user/{USER}"
    approve_finding(intake_bot, card)
    wait_for(lambda: intake_bot.deps.store.get(incident.id).status  # type: ignore[union-attr]
             in ("contained", "partially contained"), timeout=60)
    assert statuses()[user["active"]] == "Inactive"


def test_a_role_used_by_two_instance_profiles_is_cut_and_its_trust_put_back_equal(
        bot: RunningBot, world: Any, fake_slack: FakeSlack) -> None:
    """`trust=deny`: nobody may assume the role; the card names every user of it (both
    instance profiles, the instance that has one, the service its trust names); the
    release puts the trust policy back equal, and the deny on older sessions stays."""
    from handlers.iam_roles import DENY_TRUST

    client = iam()
    client.create_instance_profile(InstanceProfileName="web-prod-batch")
    client.add_role_to_instance_profile(InstanceProfileName="web-prod-batch",
                                        RoleName="web-prod")
    before = client.get_role(RoleName="web-prod")["Role"]["AssumeRolePolicyDocument"]
    card = request(bot, "role web-prod trust=deny its sessions used from a VPN exit")
    shown = json.dumps(card.blocks, ensure_ascii=False)
    for expected in ("web-prod-batch", world.instance_id, "ec2.amazonaws.com",
                     "trust policy: as now → deny sts:AssumeRole",
                     "sessions of the role issued before the cut: allowed → denied"):
        assert expected in shown, expected
    incident = approve(bot, card)
    assert incident.kind == "role" and incident.status == "contained", incident.summary
    assert client.get_role(RoleName="web-prod")["Role"]["AssumeRolePolicyDocument"] \
        == DENY_TRUST
    assert "AWSRevokeOlderSessions" in client.list_role_policies(RoleName="web-prod")[
        "PolicyNames"]

    release_card = request(bot, "release arn:aws:iam::123456789012:role/web-prod done")
    released = approve(bot, release_card)
    assert released.status == "released", released.summary
    assert client.get_role(RoleName="web-prod")["Role"]["AssumeRolePolicyDocument"] == before
    assert "AWSRevokeOlderSessions" in client.list_role_policies(RoleName="web-prod")[
        "PolicyNames"]
    assert "put back as it was" in " ".join(thread(fake_slack, release_card))


def test_an_assumed_role_finding_that_names_no_instance_proposes_the_role_playbook(
        intake_bot: RunningBot, world: Any, fake_slack: FakeSlack, queue: str) -> None:
    event = guardduty("", kind="AccessKey", key_id="ASIAQROLESESSION0001", finding_id="role-1")
    event["detail"]["resource"]["accessKeyDetails"].update(
        principalId="AROAEXAMPLEROLEID0001:deploy-pipeline", userName="web-prod",
        userType="AssumedRole")
    send(queue, event)
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    assert "IAM role proposed" in text_of(card.blocks)
    (incident,) = intake_bot.deps.store.recent()
    assert (incident.kind, incident.playbook, incident.target_id) == (
        "role", "role", "arn:aws:iam::123456789012:role/web-prod")
    assert world.instance_id in text_of(card.blocks)  # what loses its sessions too


def test_a_bucket_is_sealed_and_every_recorded_setting_put_back_equal(
        bot: RunningBot, world: Any, fake_slack: FakeSlack) -> None:
    """A bucket with a policy, a partial Public Access Block and ACL grants: sealed, the
    prior state an evidence file with its SHA-256, then released to equal settings."""
    s3 = aws_client("s3")
    bucket = "billing-exports-2231"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={
        "Rules": [{"ObjectOwnership": "ObjectWriter"}]})
    # The ACL before the Public Access Block, as S3 requires for a public grant.
    s3.put_bucket_acl(Bucket=bucket, ACL="public-read")
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": False,
        "RestrictPublicBuckets": False})
    policy = {"Version": "2012-10-17", "Statement": [{
        "Sid": "Partner", "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))

    def settings() -> dict[str, Any]:
        acl = s3.get_bucket_acl(Bucket=bucket)
        return {"policy": json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"]),
                "pab": s3.get_public_access_block(Bucket=bucket)[
                    "PublicAccessBlockConfiguration"],
                "ownership": s3.get_bucket_ownership_controls(Bucket=bucket)[
                    "OwnershipControls"],
                "grants": sorted(json.dumps(g, sort_keys=True) for g in acl["Grants"])}

    before = settings()
    card = request(bot, f"arn:aws:s3:::{bucket} listed publicly by a scanner")
    shown = json.dumps(card.blocks, ensure_ascii=False)
    for expected in ("Block Public Access: 2 of 4 on → all 4 on",
                     "bucket ACL: 1 grant(s) beyond the owner → private",
                     "object ownership: ObjectWriter → BucketOwnerEnforced",
                     "bucket policy: 1 statement(s) → the same, plus a deny"):
        assert expected in shown, expected
    incident = approve(bot, card)
    assert incident.kind == "bucket" and incident.status == "contained", incident.summary
    now = settings()
    assert set(now["pab"].values()) == {True}
    assert now["ownership"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    deny = next(st for st in now["policy"]["Statement"] if st["Sid"] == "CordonContainment")
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert deny["Condition"]["ArnNotLike"]["aws:PrincipalArn"]  # Cordon itself stays in
    (evidence,) = bot.deps.store.evidence(incident.id)
    recorded = json.loads(evidence.content)
    assert recorded["policy"] == policy and evidence.sha256

    release_card = request(bot, f"release {incident.id} scanner false positive")
    released = approve(bot, release_card)
    assert released.status == "released", released.summary
    assert settings() == before


def test_a_guardduty_s3_finding_proposes_the_bucket_playbook(
        intake_bot: RunningBot, world: Any, fake_slack: FakeSlack, queue: str) -> None:
    aws_client("s3").create_bucket(Bucket="exports-7")
    event = guardduty("", kind="S3Bucket", finding_id="s3-policy-1")
    event["detail"]["resource"] = {"resourceType": "S3Bucket", "s3BucketDetails": [{
        "name": "exports-7", "arn": "arn:aws:s3:::exports-7", "type": "Destination"}]}
    event["detail"]["type"] = "Policy:S3/BucketBlockPublicAccessDisabled"
    send(queue, event)
    (card,) = wait_for(lambda: cards(fake_slack), timeout=30)
    assert "S3 bucket proposed" in text_of(card.blocks)
    (incident,) = intake_bot.deps.store.recent()
    assert (incident.kind, incident.target_id) == ("bucket", "arn:aws:s3:::exports-7")


def test_the_form_takes_a_bucket_and_makes_its_card(
        bot: RunningBot, world: Any, fake_slack: FakeSlack) -> None:
    from tests.test_slack_surfaces import open_form

    aws_client("s3").create_bucket(Bucket="exports-9")
    view_id = open_form(bot, fake_slack)
    status, _ = bot.slack.submit_view(DANA, view_id, {
        "target": "arn:aws:s3:::exports-9", "playbook": "full", "reason": "public listing"})
    assert status == 200
    card = wait_for(lambda: fake_slack.channel_messages(CHANNEL))[0]
    (incident,) = bot.deps.store.recent()
    assert (incident.kind, incident.playbook, incident.reason) == (
        "bucket", "bucket", "public listing")
    assert "S3 bucket request" in json.dumps(card.blocks)


@pytest.mark.parametrize(("kind", "resource_id", "target"), [
    ("AwsIamUser", "arn:aws:iam::123456789012:user/ci/build-agent",
     "arn:aws:iam::123456789012:user/build-agent"),
    ("AwsIamRole", "arn:aws:iam::123456789012:role/service-role/web-prod",
     "arn:aws:iam::123456789012:role/web-prod"),
    ("AwsS3Bucket", "arn:aws:s3:::exports-7", "arn:aws:s3:::exports-7"),
])
def test_security_hub_findings_about_users_roles_and_buckets_propose_their_playbook(
        kind: str, resource_id: str, target: str) -> None:
    """The target without the principal's path, as a person or GuardDuty names it."""
    from playbooks.findings import parse_event
    from tests.test_intake import security_hub

    event = security_hub("i-0123456789abcdef0")
    event["detail"]["findings"][0]["Resources"] = [
        {"Type": kind, "Partition": "aws", "Region": "us-east-1", "Id": resource_id}]
    (proposal,) = parse_event(json.dumps(event))
    playbook = {"AwsIamUser": "user", "AwsIamRole": "role", "AwsS3Bucket": "bucket"}[kind]
    assert (proposal.kind, proposal.playbook, proposal.resource_id) == (
        playbook, playbook, target)
