"""Settings: every variable is documented, and a missing one stops start-up with one
clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import Settings, SettingsError, load_settings, parse_duration
from sandbox.harness import SECRET

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_lists_every_setting() -> None:
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    aliases = {f.alias for f in Settings.model_fields.values()}
    assert aliases - documented == set()


def test_missing_required_settings_stop_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CORDON_"))}
    proc = subprocess.run([sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env={
        **env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "SLACK_BOT_TOKEN is not set" in lines[0] and "SLACK_SIGNING_SECRET" in lines[0]


def test_bad_values_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SettingsError, match=r"CORDON_APPROVERS: .*alice"):
        load_settings(SLACK_BOT_TOKEN="xoxb-x", SLACK_SIGNING_SECRET=SECRET,
                      CORDON_APPROVERS="alice")
    with pytest.raises(SettingsError, match="CORDON_APPROVAL_TTL"):
        load_settings(SLACK_BOT_TOKEN="xoxb-x", SLACK_SIGNING_SECRET=SECRET,
                      CORDON_APPROVAL_TTL="soon")
    with pytest.raises(SettingsError, match=r"CORDON_AUTO_CONTAIN: .*the action must be "
                                            "isolate"):
        load_settings(SLACK_BOT_TOKEN="xoxb-x", SLACK_SIGNING_SECRET=SECRET,
                      CORDON_AUTO_CONTAIN="guardduty:>=8:isolate, guardduty:>=9:full")
    with pytest.raises(SettingsError, match="CORDON_WATCH_MINUTES"):
        load_settings(SLACK_BOT_TOKEN="xoxb-x", SLACK_SIGNING_SECRET=SECRET,
                      CORDON_WATCH_MINUTES="-5")
    rules = load_settings(SLACK_BOT_TOKEN="xoxb-x", SLACK_SIGNING_SECRET=SECRET,
                          CORDON_AUTO_CONTAIN="guardduty:>=8:isolate , guardduty:CryptoCurrency"
                                              ":EC2/*:isolate", CORDON_AUTO_REMIND="20m")
    assert rules.auto_contain == ["guardduty:>=8:isolate", "guardduty:CryptoCurrency:EC2/*:isolate"]
    assert rules.auto_remind == 1200 and rules.watch_minutes == 30


def test_lists_and_durations_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORDON_REGIONS", "us-east-1, eu-west-1")
    monkeypatch.setenv("CORDON_APPROVERS", "S0ONCALL,U0LEAD")
    s = load_settings(SLACK_BOT_TOKEN="xoxb-x", SLACK_SIGNING_SECRET=SECRET,
                      CORDON_APPROVAL_TTL="30m")
    assert s.regions == ["us-east-1", "eu-west-1"]
    assert s.approvers == ["S0ONCALL", "U0LEAD"]
    assert s.approval_ttl == 1800
    assert parse_duration("2h") == 7200 and parse_duration("90") == 90


def test_the_manifest_asks_for_what_the_code_uses() -> None:
    import yaml

    from bot.preflight import REQUIRED_SCOPES

    manifest = yaml.safe_load((ROOT / "slack-manifest.yml").read_text())
    assert [c["command"] for c in manifest["features"]["slash_commands"]] == ["/contain"]
    assert manifest["settings"]["interactivity"]["is_enabled"] is True
    assert manifest["settings"]["socket_mode_enabled"] is True
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(REQUIRED_SCOPES)


def test_the_manifest_keeps_to_the_schema_rules_it_relies_on() -> None:
    """Slack's manifest schema (its reference, and the Web API's manifest types): the
    limits of each field Cordon sets, and the ids the code listens to."""
    import yaml

    from bot.ids import COMMAND, MESSAGE_SHORTCUT

    manifest = yaml.safe_load((ROOT / "slack-manifest.yml").read_text())
    info, features = manifest["display_information"], manifest["features"]
    assert len(info["name"]) <= 35 and len(info["description"]) <= 140
    assert re.fullmatch(r"#[0-9a-fA-F]{6}|#[0-9a-fA-F]{3}", info["background_color"])
    assert re.fullmatch(r"[a-z0-9._-]{1,80}", features["bot_user"]["display_name"])
    (command,) = features["slash_commands"]
    assert command["command"] == COMMAND and len(command["command"]) <= 32
    assert len(command["description"]) <= 2000 and len(command["usage_hint"]) <= 1000
    shortcuts = features["shortcuts"]
    assert 1 <= len(shortcuts) <= 10
    (shortcut,) = shortcuts
    assert shortcut["type"] == "message" and shortcut["callback_id"] == MESSAGE_SHORTCUT
    assert len(shortcut["callback_id"]) <= 255 and len(shortcut["description"]) <= 150
    assert len(shortcut["name"]) <= 24
    assert features["app_home"]["home_tab_enabled"] is True
    events = manifest["settings"]["event_subscriptions"]["bot_events"]
    assert events == ["app_home_opened"] and len(events) <= 100
    assert len(manifest["oauth_config"]["scopes"]["bot"]) <= 255


@pytest.mark.parametrize(("env", "said"), [
    ({"SLACK_BOT_TOKEN": "xoxb-your-bot-token"}, "placeholder"),
    ({"SLACK_SIGNING_SECRET": "abc"}, "32 letters and digits"),
    ({"SLACK_SIGNING_SECRET": "your-signing-secret"}, "32 letters and digits"),
    ({"CORDON_REGIONS": "us-east-1,mars-1"}, "not AWS regions: mars-1"),
])
def test_placeholders_a_misshapen_secret_and_unknown_regions_are_refused(
        env: dict[str, str], said: str) -> None:
    good = {"SLACK_BOT_TOKEN": "xoxb-1-2-abc",
            "SLACK_SIGNING_SECRET": SECRET}
    with pytest.raises(SettingsError, match=said):
        load_settings(**{**good, **env})
    assert load_settings(**good).regions  # the good ones pass


def test_serve_refuses_a_port_out_of_range_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "bot", "serve", "--port", "99999"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("'99999' is not a port (1-65535)")
