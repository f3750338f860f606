"""`/contain` grammar: the text a person typed → a typed command, or BadInput with a
short explanation of what was wrong and what to type instead."""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal

from pydantic import BaseModel

from playbooks.catalogue import DEFAULT_PLAYBOOK, FLEET_PLAYBOOKS
from playbooks.catalogue import INSTANCE_PLAYBOOKS as PLAYBOOKS
from playbooks.errors import BadInput

INSTANCE_ID = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
INCIDENT_ID = re.compile(r"^CRD-[A-Z0-9]{6}$")
KEY_ID = re.compile(r"^(AKIA|ASIA)[A-Z0-9]{16}$")
ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")
REGION = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d$")
ACCOUNT = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
OPTION = re.compile(r"^([a-z_]+)=(.*)$")
ASG_NAME = re.compile(r"^[\w .:/=+@-]{1,255}$")
TAG_PART = re.compile(r"^[\w .:/+@-]{1,128}$")
MAX_FLEET = 200
OPTIONS = ("region", "account", "playbook", "mode")
MODES = ("replace", "insert")
MAX_REASON = 500

# Error messages are plain text: blocks.render_error escapes them as it sends them.
USAGE = ("`/contain <instance> [playbook] [region=R] reason…` (the instance by id, "
         "ARN, private IP or Name tag) — or `/contain` alone for a form, `/contain help`")


class HelpCommand(BaseModel):
    verb: Literal["help"] = "help"


class StatusCommand(BaseModel):
    verb: Literal["status"] = "status"
    query: str | None = None


class ContainCommand(BaseModel):
    verb: Literal["contain"] = "contain"
    # The instance by id (an ARN gives its id and region); or by the names people
    # have: an exact Name tag, or a private IPv4 address — resolved by a look-up.
    instance_id: str = ""
    name: str | None = None
    private_ip: str | None = None
    playbook: str = DEFAULT_PLAYBOOK
    region: str | None = None
    account: str | None = None
    mode: str | None = None
    reason: str = ""
    # A fleet: several instances on one card — by id, by Auto Scaling group, by tag.
    instance_ids: list[str] = []
    asg: str | None = None
    tag: tuple[str, str] | None = None

    @property
    def options(self) -> dict[str, str]:
        return {"mode": self.mode} if self.mode else {}

    @property
    def is_fleet(self) -> bool:
        return bool(self.instance_ids or self.asg or self.tag)

    @property
    def target(self) -> str:
        """The target as typed, for messages."""
        if self.asg is not None:
            return f"asg={self.asg}"
        if self.tag is not None:
            return f"tag:{self.tag[0]}={self.tag[1]}"
        if self.instance_ids:
            return " ".join(self.instance_ids)
        if self.name is not None:
            return f"Name={self.name}"
        return self.private_ip or self.instance_id


class KeyCommand(BaseModel):
    verb: Literal["key"] = "key"
    key_id: str
    console_off: bool = False
    role: str | None = None
    reason: str = ""

    @property
    def options(self) -> dict[str, str]:
        opts = {"console": "off"} if self.console_off else {}
        return {**opts, **({"role": self.role} if self.role else {})}


class UserCommand(BaseModel):
    """An IAM user, by name (in Cordon's own account, or `account=`) or by ARN."""

    verb: Literal["user"] = "user"
    user: str
    account_id: str | None = None  # from an ARN: the account it names
    account: str | None = None  # account=NAME (one of CORDON_ACCOUNTS)
    reason: str = ""

    @property
    def options(self) -> dict[str, str]:
        return {}


class RoleCommand(BaseModel):
    """An IAM role, by name (in Cordon's own account, or `account=`) or by ARN."""

    verb: Literal["role"] = "role"
    role: str
    account_id: str | None = None
    account: str | None = None
    trust_deny: bool = False
    reason: str = ""

    @property
    def options(self) -> dict[str, str]:
        return {"trust": "deny"} if self.trust_deny else {}


class BucketCommand(BaseModel):
    """An S3 bucket, by name or `arn:aws:s3:::NAME` (`account=` when not Cordon's own)."""

    verb: Literal["bucket"] = "bucket"
    bucket: str
    account: str | None = None
    reason: str = ""


class ReleaseCommand(BaseModel):
    verb: Literal["release"] = "release"
    query: str
    reason: str = ""


class ExportCommand(BaseModel):
    verb: Literal["export"] = "export"
    query: str


Command = (HelpCommand | StatusCommand | ContainCommand | ReleaseCommand | KeyCommand
           | UserCommand | RoleCommand | BucketCommand | ExportCommand)


ARN = re.compile(r"^arn:aws(?:-cn|-us-gov|-iso[a-z]?)?:ec2:([a-z0-9-]+):(\d{12}):instance/"
                 r"(i-(?:[0-9a-f]{8}|[0-9a-f]{17}))$")
IPV4 = re.compile(r"^(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)$")
NAME_TAG = re.compile(r"^[\w .:/=+@-]{1,255}$")
VERBS = ("help", "-h", "--help", "?", "status", "release", "key", "user", "role", "bucket",
         "export")
# S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens.
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
BUCKET_ARN = re.compile(r"^arn:aws(?:-cn|-us-gov|-iso[a-z]?)?:s3:::([a-z0-9][a-z0-9.-]{1,61}"
                        r"[a-z0-9])$")
# IAM user names: letters, digits and +=,.@_- (up to 64); an ARN's path is kept apart.
USER_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")
USER_ARN = re.compile(r"^arn:aws(?:-cn|-us-gov|-iso[a-z]?)?:iam::(\d{12}):user/(?:[\w+=,.@/-]*/)?"
                      r"([\w+=,.@-]{1,64})$")
ROLE_ARN = re.compile(r"^arn:aws(?:-cn|-us-gov|-iso[a-z]?)?:iam::(\d{12}):role/(?:[\w+=,.@/-]*/)?"
                      r"([\w+=,.@-]{1,64})$")


def parse(text: str) -> Command:
    tokens = text.split()
    if not tokens or tokens[0].lower() in ("help", "-h", "--help", "?"):
        return HelpCommand()
    if text.lstrip().startswith(('"', "“")):
        return _by_quoted_name(text.strip())
    verb = tokens[0].lower()
    if verb == "status":
        return _status(tokens[1:])
    if verb == "release":
        return _release(tokens[1:])
    if verb == "key":
        return _key(tokens[1:])
    if verb == "user":
        return _user(tokens[1:])
    if verb == "role":
        return _role(tokens[1:])
    if verb == "bucket":
        return _bucket(tokens[1:])
    if BUCKET_ARN.match(tokens[0]):
        return _bucket(tokens)
    if verb == "export":
        if len(tokens) == 2 and (query := _target_id(tokens[1])):
            return ExportCommand(query=query)
        raise BadInput("`/contain export` takes an incident id (`CRD-…`), an instance id "
                       "(`i-…`) or an access key id: its latest incident's record is posted "
                       "in its thread.")
    if INSTANCE_ID.match(verb):
        ids = [verb]
        while len(ids) < len(tokens) and INSTANCE_ID.match(tokens[len(ids)].lower()):
            ids.append(tokens[len(ids)].lower())
        if len(ids) == 1:
            return _contain(verb, tokens[1:])
        if len(set(ids)) != len(ids):
            raise BadInput("an instance is named twice in the list.")
        if len(ids) > MAX_FLEET:
            raise BadInput(f"{len(ids)} instances: at most {MAX_FLEET} on one card.")
        return _fleet(_contain("", tokens[len(ids):]), instance_ids=ids)
    if verb.startswith("asg="):
        name = tokens[0][4:]
        if not ASG_NAME.match(name):
            raise BadInput(f"`{_clip(name)}` is not an Auto Scaling group name.")
        return _fleet(_contain("", tokens[1:]), asg=name)
    if verb.startswith("tag:"):
        key, eq, value = tokens[0][4:].partition("=")
        if not eq or not TAG_PART.match(key) or not TAG_PART.match(value):
            raise BadInput(f"`{_clip(tokens[0])}`: a tag is written `tag:KEY=VALUE`, e.g. "
                           "`tag:app=billing`.")
        return _fleet(_contain("", tokens[1:]), tag=(key, value))
    if verb.startswith("i-"):
        raise BadInput(f"`{tokens[0]}` is not an instance id: it is `i-` and 8 or 17 "
                       f"hex digits, e.g. `i-0abc123def4567890`. Usage: {USAGE}")
    if verb.startswith("arn:") and ":iam::" in verb and ":user/" in verb:
        return _user(tokens)
    if verb.startswith("arn:") and ":iam::" in verb and ":role/" in verb:
        return _role(tokens)
    if verb.startswith("arn:"):
        m = ARN.match(tokens[0])
        if not m:
            raise BadInput(f"`{_clip(tokens[0])}` is not an EC2 instance ARN "
                           "(`arn:aws:ec2:REGION:ACCOUNT:instance/i-…`).")
        cmd = _contain(m.group(3), tokens[1:])
        if cmd.region and cmd.region != m.group(1):
            raise BadInput(f"the ARN says region `{m.group(1)}`, `region=` says "
                           f"`{cmd.region}`.")
        return cmd.model_copy(update={"region": m.group(1)})
    if IPV4.match(verb):
        return _contain("", tokens[1:]).model_copy(update={"private_ip": verb})
    if re.fullmatch(r"[\d.]+", verb):
        raise BadInput(f"`{_clip(verb)}` is not an IPv4 address.")
    if verb.startswith("name=") and NAME_TAG.match(tokens[0][5:]):
        return _contain("", tokens[1:]).model_copy(update={"name": tokens[0][5:]})
    close = difflib.get_close_matches(verb, [*VERBS, "contain"], n=1, cutoff=0.8)
    if close:
        meant = "" if close[0] == "contain" else f" (did you mean `/contain {close[0]} …`?)"
        raise BadInput(f"`{_clip(tokens[0])}` looks like a command word{meant}, not "
                       f"an instance. For an instance whose Name tag is that, write "
                       f"`/contain name={_clip(tokens[0])} …`. Usage: {USAGE}")
    if NAME_TAG.match(tokens[0]) and not tokens[0].startswith("-"):
        # Anything else is the instance's Name tag, exactly as written.
        return _contain("", tokens[1:]).model_copy(update={"name": tokens[0]})
    raise BadInput(f"I expected an instance (id `i-…`, ARN, private IP or Name tag) or one "
                   f"of `status`, `release`, `key`, `export`, `help`; got "
                   f"`{_clip(tokens[0])}`. Usage: {USAGE}")


def _by_quoted_name(text: str) -> ContainCommand:
    """`"web prod 3" isolate reason…`: a Name tag with spaces, in quotes."""
    close = {"\"": "\"", "“": "”"}[text[0]]
    end = text.find(close, 1)
    if end <= 1:
        raise BadInput("a quoted Name tag needs its closing quote, e.g. "
                       "`/contain \"web prod 3\" isolate reason…`.")
    name = text[1:end]
    if not NAME_TAG.match(name):
        raise BadInput(f"`{_clip(name)}` cannot be a Name tag.")
    return _contain("", text[end + 1:].split()).model_copy(update={"name": name})


def _status(args: list[str]) -> StatusCommand:
    if not args:
        return StatusCommand()
    if len(args) == 1:
        query = _target_id(args[0])
        if query:
            return StatusCommand(query=query)
    raise BadInput("`/contain status` takes nothing, an instance id (`i-…`), a key id "
                   f"(`AKIA…`) or an incident id (`CRD-…`); got "
                   f"`{_clip(' '.join(args))}`.")


def _target_id(query: str) -> str | None:
    if INSTANCE_ID.match(query.lower()):
        return query.lower()
    if INCIDENT_ID.match(query.upper()) or KEY_ID.match(query.upper()):
        return query.upper()
    if m := USER_ARN.match(query):  # a user's requests are kept under its ARN, path-less
        return f"{query.split(':user/')[0]}:user/{m.group(2)}"
    if m := ROLE_ARN.match(query):
        return f"{query.split(':role/')[0]}:role/{m.group(2)}"
    if BUCKET_ARN.match(query):
        return query
    return None


def _release(args: list[str]) -> ReleaseCommand:
    if args and (query := _target_id(args[0])):
        return ReleaseCommand(query=query, reason=" ".join(args[1:]))
    got = _clip(" ".join(args)) if args else "nothing"
    raise BadInput("`/contain release` takes an instance id (`i-…`), an access key id "
                   f"(`AKIA…`), an IAM user's ARN or an incident id (`CRD-…`), then an "
                   f"optional reason; "
                   f"got `{got}`.")


def _key(args: list[str]) -> KeyCommand:
    if not args or not KEY_ID.match(args[0].upper()):
        got = _clip(args[0]) if args else "nothing"
        raise BadInput("`/contain key` takes an access key id: `AKIA` or `ASIA` and 16 "
                       f"letters or digits, e.g. `AKIAIOSFODNN7EXAMPLE`; got `{got}`.")
    fields: dict[str, Any] = {"key_id": args[0].upper()}
    rest = args[1:]
    while rest and (m := OPTION.match(rest[0])):
        key, value = m.group(1), m.group(2)
        if key == "console" and value == "off":
            fields["console_off"] = True
        elif key == "role" and ROLE_NAME.match(value):
            fields["role"] = value
        else:
            raise BadInput(f"`{_clip(rest[0])}`: for a key the options are "
                           "`console=off` and `role=NAME` (for a temporary `ASIA…` key).")
        rest.pop(0)
    if "role" in fields and not fields["key_id"].startswith("ASIA"):
        raise BadInput("`role=` is for temporary (`ASIA…`) keys only.")
    return KeyCommand(reason=" ".join(rest), **fields)


def _user(args: list[str]) -> UserCommand:
    """`user NAME|ARN [account=NAME] reason…`."""
    if not args:
        raise BadInput("`/contain user` takes an IAM user's name or ARN, e.g. "
                       "`/contain user deploy-bot key found in a public repository`.")
    fields: dict[str, Any] = {}
    if m := USER_ARN.match(args[0]):
        fields.update(account_id=m.group(1), user=m.group(2))
    elif USER_NAME.match(args[0]) and not args[0].lower().startswith("arn:"):
        fields["user"] = args[0]
    else:
        raise BadInput(f"`{_clip(args[0])}` is not an IAM user name (letters, digits and "
                       "`+=,.@_-`, at most 64) or user ARN (`arn:aws:iam::ACCOUNT:user/NAME`).")
    rest = args[1:]
    while rest and (m := OPTION.match(rest[0])):
        if m.group(1) != "account" or not ACCOUNT.match(m.group(2)) or "account" in fields:
            raise BadInput(f"`{_clip(rest[0])}`: for a user the one option is "
                           "`account=NAME` (one of CORDON_ACCOUNTS); an ARN names its own.")
        fields["account"] = m.group(2)
        rest.pop(0)
    if fields.get("account") and fields.get("account_id"):
        raise BadInput("the ARN names the account already: leave out `account=`.")
    return UserCommand(reason=" ".join(rest), **fields)


def _role(args: list[str]) -> RoleCommand:
    """`role NAME|ARN [trust=deny] [account=NAME] reason…`."""
    if not args:
        raise BadInput("`/contain role` takes an IAM role's name or ARN, e.g. "
                       "`/contain role web-prod trust=deny credentials used from outside`.")
    fields: dict[str, Any] = {}
    if m := ROLE_ARN.match(args[0]):
        fields.update(account_id=m.group(1), role=m.group(2))
    elif ROLE_NAME.match(args[0]) and not args[0].lower().startswith("arn:"):
        fields["role"] = args[0]
    else:
        raise BadInput(f"`{_clip(args[0])}` is not an IAM role name (letters, digits and "
                       "`+=,.@_-`, at most 64) or role ARN (`arn:aws:iam::ACCOUNT:role/NAME`).")
    rest = args[1:]
    while rest and (m := OPTION.match(rest[0])):
        key, value = m.group(1), m.group(2)
        if key == "trust" and value == "deny" and "trust_deny" not in fields:
            fields["trust_deny"] = True
        elif key == "account" and ACCOUNT.match(value) and "account" not in fields \
                and "account_id" not in fields:
            fields["account"] = value
        else:
            raise BadInput(f"`{_clip(rest[0])}`: for a role the options are `trust=deny` and "
                           "`account=NAME` (an ARN names its own account).")
        rest.pop(0)
    return RoleCommand(reason=" ".join(rest), **fields)


def _bucket(args: list[str]) -> BucketCommand:
    """`bucket NAME|ARN [account=NAME] reason…`."""
    if not args:
        raise BadInput("`/contain bucket` takes an S3 bucket's name or ARN, e.g. "
                       "`/contain bucket billing-exports public listing seen`.")
    m = BUCKET_ARN.match(args[0])
    name = m.group(1) if m else args[0]
    if not BUCKET_NAME.match(name) or ".." in name:
        raise BadInput(f"`{_clip(args[0])}` is not an S3 bucket name (3-63 lower-case "
                       "letters, digits, dots and hyphens) or ARN (`arn:aws:s3:::NAME`).")
    fields: dict[str, Any] = {"bucket": name}
    rest = args[1:]
    while rest and (o := OPTION.match(rest[0])):
        if o.group(1) != "account" or not ACCOUNT.match(o.group(2)) or "account" in fields:
            raise BadInput(f"`{_clip(rest[0])}`: for a bucket the one option is "
                           "`account=NAME` (one of CORDON_ACCOUNTS).")
        fields["account"] = o.group(2)
        rest.pop(0)
    return BucketCommand(reason=" ".join(rest), **fields)


def _contain(instance_id: str, args: list[str]) -> ContainCommand:
    fields: dict[str, str] = {}
    rest = list(args)
    if rest and rest[0].lower() in PLAYBOOKS:
        fields["playbook"] = rest.pop(0).lower()
    elif rest and _looks_like_playbook(rest[0], alone=len(rest) == 1):
        hint = " A reason takes more than one word." if len(rest) == 1 else ""
        raise BadInput(_unknown_playbook(rest[0]) + hint)
    while rest and (m := OPTION.match(rest[0])):
        key, value = m.group(1), m.group(2)
        if key not in OPTIONS:
            raise BadInput(f"unknown option `{_clip(key)}=`; options are "
                           + ", ".join(f"`{o}=`" for o in OPTIONS) + ".")
        if key in fields:
            raise BadInput(f"`{key}=` is given twice.")
        fields[key] = value
        rest.pop(0)
    if "playbook" in fields and fields["playbook"] not in PLAYBOOKS:
        raise BadInput(_unknown_playbook(fields["playbook"]))
    if "region" in fields and not REGION.match(fields["region"]):
        raise BadInput(f"`{_clip(fields['region'])}` is not an AWS region name "
                       "(e.g. `eu-west-1`).")
    if "mode" in fields and fields["mode"] not in MODES:
        raise BadInput(f"`mode={_clip(fields['mode'])}`: the modes are "
                       + ", ".join(f"`{m}`" for m in MODES) + " (for the `nacl` playbook).")
    if "account" in fields and not ACCOUNT.match(fields["account"]):
        raise BadInput(f"`{_clip(fields['account'])}` is not an account name or id.")
    reason = " ".join(rest)
    if len(reason) > MAX_REASON:
        raise BadInput(f"the reason is {len(reason)} characters; keep it under {MAX_REASON}.")
    return ContainCommand(instance_id=instance_id, reason=reason, **fields)


def _fleet(cmd: ContainCommand, **target: Any) -> ContainCommand:
    if cmd.playbook not in FLEET_PLAYBOOKS:
        raise BadInput("a fleet takes the per-instance playbooks ("
                       + ", ".join(f"`{p}`" for p in FLEET_PLAYBOOKS)
                       + f"); `{cmd.playbook}` changes a whole subnet: ask for it per instance.")
    return cmd.model_copy(update=target)


def _looks_like_playbook(word: str, alone: bool) -> bool:
    word = word.lower()
    if difflib.get_close_matches(word, list(PLAYBOOKS), n=1, cutoff=0.75):
        return True
    # A lone lower-case word after the id is meant as a playbook, not as a reason.
    return alone and re.fullmatch(r"[a-z][a-z0-9-]{1,20}", word) is not None


def _unknown_playbook(word: str) -> str:
    names = ", ".join(f"`{n}`" for n in PLAYBOOKS)
    close = difflib.get_close_matches(word.lower(), list(PLAYBOOKS), n=1, cutoff=0.6)
    hint = f" Did you mean `{close[0]}`?" if close else ""
    return f"unknown playbook `{_clip(word)}`.{hint} Playbooks: {names}."


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
