"""`/contain` grammar."""

from __future__ import annotations

import pytest

from bot import grammar
from playbooks.errors import BadInput

ID = "i-0abc123def4567890"


def test_a_full_request() -> None:
    cmd = grammar.parse(f"{ID} isolate region=eu-west-1 account=prod suspected crypto-miner")
    assert cmd == grammar.ContainCommand(instance_id=ID, playbook="isolate", region="eu-west-1",
                                         account="prod", reason="suspected crypto-miner")


def test_the_playbook_is_optional_and_defaults() -> None:
    cmd = grammar.parse(f"{ID} outbound traffic to a mining pool")
    assert isinstance(cmd, grammar.ContainCommand)
    assert cmd.playbook == "full" and cmd.reason == "outbound traffic to a mining pool"


def test_ids_are_case_insensitive_and_short_ids_accepted() -> None:
    cmd = grammar.parse("I-0ABCDEF1 isolate x y")
    assert isinstance(cmd, grammar.ContainCommand) and cmd.instance_id == "i-0abcdef1"


@pytest.mark.parametrize("text", ["", "help", "  HELP "])
def test_help(text: str) -> None:
    assert isinstance(grammar.parse(text), grammar.HelpCommand)


def test_status_forms() -> None:
    assert grammar.parse("status") == grammar.StatusCommand()
    assert grammar.parse(f"status {ID}") == grammar.StatusCommand(query=ID)
    assert grammar.parse("status crd-abc234") == grammar.StatusCommand(query="CRD-ABC234")


@pytest.mark.parametrize(("text", "says"), [
    ("i-xyz isolate", "is not an instance id"),
    (f"{ID} isolat a typo", "Did you mean `isolate`"),
    (f"{ID} quarantine", "unknown playbook `quarantine`"),
    (f"{ID} nacl mode=sideways why", "the modes are"),
    (f"{ID} playbook=nuke why", "unknown playbook `nuke`"),
    (f"{ID} region=mars why", "is not an AWS region"),
    (f"{ID} region=eu-west-1 region=us-east-1 why", "given twice"),
    (f"{ID} colour=red why", "unknown option"),
    (f"{ID} " + "x " * 300, "keep it under"),
    ("contain the web box", "looks like a command word, not an instance. For an instance"),
    ("status a b", "takes nothing"),
    ("key AKIA123 leaked", "`AKIA` or `ASIA` and 16"),
    ("key AKIAIOSFODNN7EXAMPLE role=ci leaked", "for temporary (`ASIA…`) keys only"),
    ("key AKIAIOSFODNN7EXAMPLE console=on leaked", "the options are `console=off`"),
    ("release", "takes an instance id"),
    ("release vpc-123 undo", "takes an instance id"),
])
def test_bad_input_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(BadInput, match=None) as err:
        grammar.parse(text)
    assert says in str(err.value)


def test_nacl_mode() -> None:
    cmd = grammar.parse(f"{ID} nacl mode=insert worm in the subnet")
    assert isinstance(cmd, grammar.ContainCommand)
    assert cmd.playbook == "nacl" and cmd.options == {"mode": "insert"}


def test_key_forms() -> None:
    cmd = grammar.parse("key akiaiosfodnn7example console=off in a gist")
    assert cmd == grammar.KeyCommand(key_id="AKIAIOSFODNN7EXAMPLE", console_off=True,
                                     reason="in a gist")
    assert isinstance(cmd, grammar.KeyCommand) and cmd.options == {"console": "off"}
    temp = grammar.parse("key ASIAIOSFODNN7EXAMPLE role=ci-runner seen")
    assert isinstance(temp, grammar.KeyCommand) and temp.options == {"role": "ci-runner"}


def test_release_forms() -> None:
    assert grammar.parse(f"release {ID} false positive") == grammar.ReleaseCommand(
        query=ID, reason="false positive")
    assert grammar.parse("release crd-abc234") == grammar.ReleaseCommand(query="CRD-ABC234")


def test_typed_text_is_escaped_in_errors() -> None:
    """The message is plain text (as typed); what goes to Slack is escaped whole."""
    from bot.blocks import render_error
    from playbooks.errors import AlreadyDecided

    with pytest.raises(BadInput) as err:
        grammar.parse("<!channel> hello")
    assert "`<!channel>`" in str(err.value)
    sent = render_error(err.value)
    assert "<!channel>" not in sent and "&lt;!channel&gt;" in sent
    assert "&lt;instance&gt;" in sent  # the usage's placeholder is not a link either
    decided = render_error(AlreadyDecided("CRD-X was already approved by U0LEE", by="U0LEE"))
    assert decided == "⚠️ CRD-X was already approved by <@U0LEE>"


@pytest.mark.parametrize(("text", "want"), [
    ("arn:aws:ec2:eu-west-1:123456789012:instance/i-0abcdef1 isolate miner",
     {"instance_id": "i-0abcdef1", "region": "eu-west-1", "playbook": "isolate"}),
    ("10.20.1.7 isolate miner", {"private_ip": "10.20.1.7", "instance_id": ""}),
    ("web-prod-3 nacl worm", {"name": "web-prod-3", "playbook": "nacl"}),
    ('"web prod 3" isolate miner on 3333', {"name": "web prod 3", "reason": "miner on 3333"}),
    ("name=status full odd name", {"name": "status", "playbook": "full"}),
])
def test_targets_by_arn_private_ip_and_name_tag(text: str, want: dict[str, str]) -> None:
    cmd = grammar.parse(text)
    assert isinstance(cmd, grammar.ContainCommand)
    assert {k: getattr(cmd, k) for k in want} == want


@pytest.mark.parametrize(("text", "says"), [
    ("arn:aws:ec2:eu-west-1:123:instance/i-0abcdef1 x", "is not an EC2 instance ARN"),
    ("arn:aws:ec2:eu-west-1:123456789012:instance/i-0abcdef1 region=us-east-1 x",
     "the ARN says region `eu-west-1`"),
    ("10.20.300.1 isolate x", "is not an IPv4 address"),
    ("stauts", "did you mean `/contain status …`?"),
    ('"web prod isolate x', "needs its closing quote"),
])
def test_bad_targets_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(BadInput) as err:
        grammar.parse(text)
    assert says in str(err.value)


def test_user_role_and_bucket_forms() -> None:
    user = grammar.parse("arn:aws:iam::123456789012:user/ci/build-agent leaked in a log")
    assert isinstance(user, grammar.UserCommand)
    assert (user.user, user.account_id, user.reason) == (
        "build-agent", "123456789012", "leaked in a log")
    role = grammar.parse("role web-prod trust=deny account=prod used from a VPN")
    assert isinstance(role, grammar.RoleCommand)
    assert (role.role, role.account, role.options) == ("web-prod", "prod", {"trust": "deny"})
    bucket = grammar.parse("arn:aws:s3:::billing-exports public listing")
    assert isinstance(bucket, grammar.BucketCommand) and bucket.bucket == "billing-exports"
    release = grammar.parse("release arn:aws:iam::123456789012:role/service-role/web-prod")
    assert isinstance(release, grammar.ReleaseCommand)
    assert release.query == "arn:aws:iam::123456789012:role/web-prod"


@pytest.mark.parametrize(("text", "says"), [
    ("user", "takes an IAM user's name or ARN"),
    ("user <!here> x", "is not an IAM user name"),
    ("user bob region=eu-west-1 x", "the one option is `account=NAME`"),
    ("role arn:aws:iam::1:role/x y", "is not an IAM role name"),
    ("role web trust=allow x", "the options are `trust=deny`"),
    ("bucket Not_A_Bucket x", "is not an S3 bucket name"),
    ("bucket a..b x", "is not an S3 bucket name"),
])
def test_bad_user_role_and_bucket_input_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(BadInput) as err:
        grammar.parse(text)
    assert says in str(err.value) and len(str(err.value)) < 300
