"""Every setting, from the environment or `.env` (see `.env.example`)."""

from __future__ import annotations

import os
import re
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DURATION = re.compile(r"^\s*(\d+)\s*([smh]?)\s*$")


def parse_duration(value: object) -> int:
    """Seconds from `1800`, `90s`, `30m` or `2h`."""
    if isinstance(value, int):
        return value
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 1800, 30m, 2h)")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def split_list(value: object) -> list[str]:
    """A comma-separated setting (or a list) as its non-empty, stripped parts."""
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value or "").split(",") if part.strip()]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    slack_bot_token: str = Field(alias="SLACK_BOT_TOKEN", min_length=1)
    slack_signing_secret: str = Field(alias="SLACK_SIGNING_SECRET", min_length=1)
    slack_app_token: str | None = Field(default=None, alias="SLACK_APP_TOKEN")
    slack_api_url: str | None = Field(default=None, alias="SLACK_API_URL")

    approvers: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                      alias="CORDON_APPROVERS")
    database_url: str = Field(default="sqlite:///cordon.db", alias="CORDON_DATABASE_URL")
    regions: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="CORDON_REGIONS",
                                                    validate_default=True)
    accounts: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict,
                                                          alias="CORDON_ACCOUNTS")
    approval_ttl: int = Field(default=1800, alias="CORDON_APPROVAL_TTL", ge=60, le=86400)
    asg_decrement: bool = Field(default=False, alias="CORDON_ASG_DECREMENT")
    key_lookback_days: int = Field(default=7, alias="CORDON_KEY_LOOKBACK", ge=1, le=90)
    wide_approvals: int = Field(default=2, alias="CORDON_WIDE_APPROVALS", ge=1, le=10)
    sweep_interval: int = Field(default=15, alias="CORDON_SWEEP_INTERVAL", ge=1, le=3600)
    usergroup_cache_ttl: int = Field(default=60, alias="CORDON_USERGROUP_CACHE_TTL", ge=0,
                                     le=86400)
    workers: int = Field(default=32, alias="CORDON_WORKERS", ge=1, le=128)
    lease_seconds: int = Field(default=10, alias="CORDON_LEASE_SECONDS", ge=3, le=300)
    # EC2's request token buckets, paced on Cordon's side (AWS's documented sizes unless
    # CORDON_EC2_BUCKETS says otherwise, e.g. after a limit increase).
    ec2_pacing: bool = Field(default=True, alias="CORDON_EC2_PACING")
    ec2_buckets: str = Field(default="", alias="CORDON_EC2_BUCKETS")
    # Alert intake: an SQS queue fed by EventBridge (GuardDuty, Security Hub, tag changes);
    # empty: intake off.
    findings_queue_url: str = Field(default="", alias="CORDON_FINDINGS_QUEUE_URL")
    findings_channel: str = Field(default="", alias="CORDON_FINDINGS_CHANNEL")
    findings_min_severity: float = Field(default=4.0, alias="CORDON_FINDINGS_MIN_SEVERITY",
                                         ge=0, le=10)
    # Security Hub findings are proposed only from these products (ProductName).
    findings_products: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["GuardDuty"], alias="CORDON_FINDINGS_PRODUCTS")
    # Who a contained bucket's deny policy still lets in (besides Cordon's own role).
    break_glass_arns: Annotated[list[str], NoDecode] = Field(
        default_factory=list, alias="CORDON_BREAK_GLASS_ARNS")
    # After a cut, CloudTrail is watched this long for use of what was cut (0: off), one
    # check (and at most one thread message) per interval.
    watch_minutes: int = Field(default=30, alias="CORDON_WATCH_MINUTES", ge=0, le=1440)
    watch_interval: int = Field(default=60, alias="CORDON_WATCH_INTERVAL", ge=60, le=3600)
    # Opt-in automatic containment: rules (see playbooks.auto); empty: every finding
    # waits for a person.
    auto_contain: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                         alias="CORDON_AUTO_CONTAIN")
    # An automatic containment nobody kept or released is reminded in its channel after.
    auto_remind: int = Field(default=900, alias="CORDON_AUTO_REMIND", ge=60, le=86400)
    log_format: str = Field(default="json", alias="CORDON_LOG_FORMAT")
    log_level: str = Field(default="INFO", alias="CORDON_LOG_LEVEL")

    port: int = Field(default=3000, alias="PORT", ge=1, le=65535)

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: str) -> str:
        if not value.startswith("xoxb-"):
            raise ValueError("a bot token starts with xoxb- (OAuth & Permissions → Bot User "
                             "OAuth Token)")
        if "your" in value.lower():
            raise ValueError("still the .env.example placeholder: paste the Bot User OAuth "
                             "Token (OAuth & Permissions)")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: str | None) -> str | None:
        if value and not value.startswith("xapp-"):
            raise ValueError("an app-level token starts with xapp- (Basic Information → "
                             "App-Level Tokens, scope connections:write)")
        return value or None

    @field_validator("findings_channel")
    @classmethod
    def _findings_channel(cls, value: str) -> str:
        if value and not re.fullmatch(r"[CG][A-Z0-9]{2,}", value):
            raise ValueError(f"{value!r} is not a channel ID (C… or G…: the channel's "
                             "details, at the bottom)")
        return value

    @model_validator(mode="after")
    def _signing_secret(self) -> Settings:
        # Socket Mode (an app token) verifies nothing with it.
        if not self.slack_app_token and not re.fullmatch(r"[0-9A-Za-z]{32}",
                                                         self.slack_signing_secret):
            raise ValueError("SLACK_SIGNING_SECRET: a signing secret is 32 letters and digits "
                             "(Basic Information → App Credentials → Signing Secret)")
        return self

    @model_validator(mode="after")
    def _intake(self) -> Settings:
        if self.findings_queue_url and not self.findings_channel:
            raise ValueError("CORDON_FINDINGS_QUEUE_URL is set: CORDON_FINDINGS_CHANNEL must "
                             "say where proposed cards go")
        return self

    @field_validator("log_format")
    @classmethod
    def _log_format(cls, value: str) -> str:
        if value.lower() not in ("json", "text"):
            raise ValueError(f"{value!r}: use json or text")
        return value.lower()

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"{value!r}: use DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("approvers", mode="before")
    @classmethod
    def _approvers(cls, value: object) -> list[str]:
        ids = split_list(value)
        bad = [i for i in ids if not re.fullmatch(r"[US][A-Z0-9]{2,}", i)]
        if bad:
            raise ValueError(f"not Slack user (U…) or user-group (S…) IDs: {', '.join(bad)}")
        return ids

    @field_validator("findings_products", mode="before")
    @classmethod
    def _products(cls, value: object) -> list[str]:
        products = split_list(value)
        if not products:
            raise ValueError("name at least one product (e.g. GuardDuty)")
        return products

    @field_validator("auto_contain", mode="before")
    @classmethod
    def _auto_contain(cls, value: object) -> list[str]:
        from playbooks.auto import parse_rules

        rules = split_list(value)
        parse_rules(rules)
        return rules

    @field_validator("break_glass_arns", mode="before")
    @classmethod
    def _break_glass(cls, value: object) -> list[str]:
        arns = split_list(value)
        bad = [a for a in arns if not re.fullmatch(
            r"arn:aws(?:-cn|-us-gov|-iso[a-z]?)?:iam::\d{12}:(?:role|user)/[\w+=,.@/*-]+", a)]
        if bad:
            raise ValueError(f"not IAM role or user ARNs: {', '.join(bad)}")
        return arns

    @field_validator("accounts", mode="before")
    @classmethod
    def _accounts(cls, value: object) -> dict[str, str]:
        if isinstance(value, dict):
            return {str(k): str(v) for k, v in value.items()}
        from playbooks.operations import parse_accounts

        return parse_accounts(str(value or ""))

    @field_validator("ec2_buckets")
    @classmethod
    def _ec2_buckets(cls, value: str) -> str:
        from playbooks.operations import parse_ec2_buckets

        parse_ec2_buckets(value)
        return value

    @field_validator("regions", mode="before")
    @classmethod
    def _regions(cls, value: object) -> list[str]:
        regions = split_list(value)
        if not regions:
            regions = [os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
                       or "us-east-1"]
        return _known_regions(regions)

    @field_validator("key_lookback_days", mode="before")
    @classmethod
    def _days(cls, value: object) -> int:
        text = str(value).strip().lower().removesuffix("d")
        if not text.isdigit():
            raise ValueError(f"not a number of days: {value!r} (use e.g. 7 or 7d)")
        return int(text)

    @field_validator("approval_ttl", "sweep_interval", "usergroup_cache_ttl", "lease_seconds",
                     "watch_interval", "auto_remind", mode="before")
    @classmethod
    def _duration(cls, value: object) -> int:
        return parse_duration(value)


def _known_regions(regions: list[str]) -> list[str]:
    """Every name must be an EC2 region of some partition (botocore's endpoint data)."""
    from playbooks.operations import aws_regions

    unknown = [r for r in regions if r not in aws_regions()]
    if unknown:
        raise ValueError(f"not AWS regions: {', '.join(unknown)} (e.g. us-east-1, "
                         "eu-west-1)")
    return regions


class RegionSettings(BaseSettings):
    """Only what `prepare` needs: no Slack."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", populate_by_name=True)

    regions: Annotated[list[str], NoDecode] = Field(default_factory=list, alias="CORDON_REGIONS",
                                                    validate_default=True)

    @field_validator("regions", mode="before")
    @classmethod
    def _regions(cls, value: object) -> list[str]:
        return Settings._regions(value)


class SettingsError(Exception):
    """One clear line about what is missing or wrong."""


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = str(err["loc"][0]) if err["loc"] else "settings"
            if err["type"] == "missing":
                problems.append(f"{name} is not set")
            else:
                problems.append(f"{name}: {err['msg']}")
        raise SettingsError("cordon: " + "; ".join(problems) + " (see .env.example)") from None
