"""Eight instances on one role, approved at once: every containment writes its own
statement into the role's one revocation policy, and none is lost (the writes take turns
under the role's lock; each is described again after it is written). Through the real
HTTP endpoint against moto, on PostgreSQL. moto evaluates no IAM condition: the test
reads the stored document, as a responder would in the console."""

from __future__ import annotations

from sandbox import world as sandbox_world
from sandbox.harness import RunningBot
from tests.conftest import AwsTrace, approve_at_once, aws_client

CHANNEL = "C0INCIDENT"
DANA, LEE = "U0DANA", "U0LEE"


def test_eight_containments_on_one_role_keep_eight_statements(
        bot: RunningBot, world: sandbox_world.World, aws_trace: AwsTrace) -> None:
    ec2, iam = aws_client("ec2"), aws_client("iam")
    profile = iam.get_instance_profile(InstanceProfileName="web-prod")["InstanceProfile"]["Arn"]
    # One launch each: moto associates a profile with the first instance of a launch only.
    ids = [ec2.run_instances(
        ImageId=sandbox_world.SANDBOX_IMAGE, MinCount=1, MaxCount=1, InstanceType="t3.small",
        SubnetId=world.subnet_id, IamInstanceProfile={"Arn": profile})["Instances"][0][
            "InstanceId"] for _ in range(7)]
    ids.append(world.instance_id)
    # Another inline policy on the role: the size check counts it too.
    iam.put_role_policy(RoleName="web-prod", PolicyName="app", PolicyDocument=(
        '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject",'
        '"Resource":"*"}]}'))
    # Every read-merge-write of the policy is slow enough for the others to overlap it.
    aws_trace.delay["PutRolePolicy"] = 0.15
    incidents = approve_at_once(bot, ids, "full worm across the fleet")
    assert [i.status for i in incidents] == ["contained"] * 8, [i.summary for i in incidents]
    document = iam.get_role_policy(RoleName="web-prod",
                                   PolicyName="cordon-revocations")["PolicyDocument"]
    sids = sorted(s["Sid"] for s in document["Statement"])
    assert len(sids) == 8
    for instance_id in ids:
        (statement,) = [s for s in document["Statement"]
                        if s["Sid"].startswith("CordonRevoke" + instance_id.replace("-", ""))]
        assert statement["Condition"]["StringEquals"]["ec2:SourceInstanceARN"] == (
            f"arn:aws:ec2:us-east-1:123456789012:instance/{instance_id}")
    # Each write was described again afterwards.
    assert aws_trace.count("PutRolePolicy") == 8
    assert aws_trace.count("GetRolePolicy", lambda p: p["PolicyName"] ==
                           "cordon-revocations") >= 24
