"""The commands a person runs: `serve` as a real process (signed requests, health,
logs, SIGTERM), `prepare`, and `sandbox`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from sandbox import world as sandbox_world
from sandbox.fake_slack import FakeSlack
from sandbox.harness import SECRET, wait_for
from sandbox.signed import SignedSlack

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(local_aws: sandbox_world.LocalAws, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "CORDON_"))}
    env.update(sandbox_world.SANDBOX_ENV, AWS_ENDPOINT_URL=local_aws.url,
               PYTHONPATH=str(ROOT), **extra)
    return env


def health(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return int(r.status)
    except Exception:
        return 0


def test_serve_runs_an_incident_logs_it_and_stops_on_sigterm(
        tmp_path: Path, local_aws: sandbox_world.LocalAws, world: sandbox_world.World,
        fake_slack: FakeSlack) -> None:
    port = free_port()
    env = env_for(local_aws, SLACK_BOT_TOKEN="xoxb-test", SLACK_SIGNING_SECRET=SECRET,
                  SLACK_API_URL=fake_slack.api_url, CORDON_APPROVERS="S0ONCALL",
                  CORDON_DATABASE_URL=f"sqlite:///{tmp_path}/cordon.db", PORT=str(port))
    log = (tmp_path / "stderr.log").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_for(lambda: health(port) == 200, timeout=30)
        slack = SignedSlack(f"http://127.0.0.1:{port}/slack/events", SECRET, fake_slack)
        assert slack.command("U0DANA", "C1", f"{world.instance_id} isolate miner")[0] == 200
        card = wait_for(lambda: fake_slack.channel_messages("C1"))[0]
        slack.click_button("U0LEE", "C1", card.ts, "Approve")
        wait_for(lambda: any(m.text.startswith("🔒 *Contained*")
                             for m in fake_slack.thread("C1", card.ts)), timeout=30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log.seek(0)
    lines = [json.loads(line) for line in log.read().splitlines() if line.startswith("{")]
    log.close()
    incident_id = card.blocks[0]["text"]["text"].split()[-1]
    about = [line for line in lines if line["incident"] == incident_id]
    events = {line["event"] for line in about}
    assert {"request opened", "decided", "run claimed", "step finished", "run finished"} <= events
    assert any(line["event"] == "shutting down" and line["signal"] == "SIGTERM" for line in lines)


def test_serve_will_not_start_without_its_database(
        tmp_path: Path, local_aws: sandbox_world.LocalAws, fake_slack: FakeSlack) -> None:
    port = free_port()
    env = env_for(local_aws, SLACK_BOT_TOKEN="xoxb-test", SLACK_SIGNING_SECRET=SECRET,
                  SLACK_API_URL=fake_slack.api_url,
                  CORDON_DATABASE_URL="postgresql+psycopg://nobody@127.0.0.1:1/none",
                  PORT=str(port))
    proc = subprocess.run([sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    # A bot that cannot record what it does must not start.
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()  # one line, with the real cause
    assert line.startswith("cordon: cannot open the database (OperationalError):")
    assert "Connection refused" in line and line.endswith("(check CORDON_DATABASE_URL)")


def _serve_fails(tmp_path: Path, local_aws: sandbox_world.LocalAws, **env: str) -> str:
    settings = {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": SECRET,
                "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/cordon.db", **env}
    proc = subprocess.run([sys.executable, "-m", "bot", "serve"], cwd=tmp_path,
                          env=env_for(local_aws, **settings), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    # The failure is one plain line (log lines, JSON, may come before it).
    return proc.stderr.strip().splitlines()[-1]


def _settings_refused(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                      tmp_path: Path, **env: str) -> str:
    """`serve`'s entry point with these settings: it must stop before opening anything
    (a bot built from them would fail this test, not serve)."""
    import bot.wiring
    from bot.__main__ import main

    def built(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("serve accepted the settings")

    monkeypatch.setattr(bot.wiring, "build_deps", built)
    monkeypatch.chdir(tmp_path)  # no .env from the checkout
    for name in [k for k in os.environ if k.startswith(("SLACK_", "CORDON_"))]:
        monkeypatch.delenv(name)
    for name, value in {"SLACK_BOT_TOKEN": "xoxb-test", "SLACK_SIGNING_SECRET": SECRET,
                        "CORDON_DATABASE_URL": f"sqlite:///{tmp_path}/cordon.db",
                        **env}.items():
        monkeypatch.setenv(name, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    (line,) = err.strip().splitlines()
    return line


def test_each_settings_failure_is_one_clear_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    def refused(**env: str) -> str:
        return _settings_refused(monkeypatch, capsys, tmp_path, **env)

    assert "a bot token starts with xoxb-" in refused(SLACK_BOT_TOKEN="xapp-wrong-one")
    assert "an app-level token starts with xapp-" in refused(SLACK_APP_TOKEN="xoxb-wrong-one")
    assert "CORDON_APPROVAL_TTL" in refused(CORDON_APPROVAL_TTL="0")
    assert "CORDON_LOG_LEVEL" in refused(CORDON_LOG_LEVEL="LOUD")
    assert "CORDON_LOG_FORMAT" in refused(CORDON_LOG_FORMAT="xml")


def test_each_start_up_failure_is_one_clear_line(
        tmp_path: Path, local_aws: sandbox_world.LocalAws) -> None:
    """The whole process, as a user meets it: the database's URL, a taken port."""
    assert "write it as postgresql+psycopg://" in _serve_fails(
        tmp_path, local_aws, CORDON_DATABASE_URL="postgres://u@127.0.0.1/db")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert f"cannot listen on 127.0.0.1:{port}" in _serve_fails(
            tmp_path, local_aws, PORT=str(port))


def test_serve_starts_and_resumes_runs_while_slack_is_down(
        tmp_path: Path, local_aws: sandbox_world.LocalAws) -> None:
    """Nothing answers at SLACK_API_URL: serve starts all the same (HTTP mode), healthy."""
    port, dead = free_port(), free_port()
    env = env_for(local_aws, SLACK_BOT_TOKEN="xoxb-test", SLACK_SIGNING_SECRET=SECRET,
                  SLACK_API_URL=f"http://127.0.0.1:{dead}/api/", PORT=str(port),
                  CORDON_DATABASE_URL=f"sqlite:///{tmp_path}/cordon.db")
    proc = subprocess.Popen([sys.executable, "-m", "bot", "serve"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: health(port) == 200, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    err = proc.stderr.read() if proc.stderr else ""
    assert "Traceback" not in err, err[err.find("Traceback") - 300:][:3000]


def test_prepare_creates_the_groups_once(tmp_path: Path, local_aws: sandbox_world.LocalAws,
                                         world: sandbox_world.World) -> None:
    env = env_for(local_aws, CORDON_REGIONS="us-east-1")
    cmd = [sys.executable, "-m", "bot", "prepare", "--vpc", world.vpc_id]
    first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=60)
    assert first.returncode == 0, first.stderr
    assert world.vpc_id in first.stdout and "created" in first.stdout
    second = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=60)
    assert "(existed)" in second.stdout
    assert first.stdout.split("(")[0] == second.stdout.split("(")[0]


def _sandbox(tmp_path: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLACK_", "CORDON_", "AWS_"))}
    proc = subprocess.run([sys.executable, "-m", "bot", "sandbox", *args], cwd=tmp_path,
                          env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_the_sandbox_contains_the_instance_and_says_so(tmp_path: Path) -> None:
    out = _sandbox(tmp_path)
    assert "someone else must approve" in out and "not authorised" in out
    # The pending card, with its buttons, before anyone decides.
    pending = out[out.index("before anyone decides it reads"):out.index("presses Approve")]
    assert "⏳ *Waiting for approval*" in pending and "[ Approve ]  [ Deny ]" in pending
    assert "Isolation groups ready" in pending
    assert "✅ *isolate-security-groups*" in out and "Containment verified" in out
    assert "<!channel>" in out  # shown as text in the transcript, escaped on Slack
    # And the release round trip.
    assert "✅ every ENI back on its own groups" in out and "release verified" in out
    # What /metrics counted: the containment and its release.
    assert 'cordon_incidents_total{playbook="full",source="slack",status="contained"} 1' in out
    assert 'cordon_incidents_total{playbook="release",source="slack",status="released"} 1' in out


def test_the_sandbox_plays_a_wide_playbook(tmp_path: Path) -> None:
    out = _sandbox(tmp_path, "--playbook", "nacl")
    assert "confirms the dialog naming the blast radius" in out
    assert "✅ the subnet on Cordon's deny-all network ACL" in out
    assert "✅ the subnet's ACL, route table and internet routes as before" in out
    # Never a ✅ for what was not checked: the bystander is hit, and the card said so.
    assert "✅ bystander billing-api-1 named in the blast radius on the card" in out
    assert "bystander billing-api-1 untouched" not in out


def test_the_sandbox_plays_a_leaked_key(tmp_path: Path) -> None:
    out = _sandbox(tmp_path, "--playbook", "key")
    assert "✅ the leaked key is inactive" in out and "release verified" in out


def _json_instruction(dockerfile: str, keyword: str) -> list[str]:
    text = dockerfile.replace("\\\n", " ")
    line = next(ln for ln in text.splitlines() if ln.startswith(keyword))
    return list(json.loads(line[line.index("["):]))


def test_the_container_command_serves_and_its_healthcheck_passes(
        tmp_path: Path, local_aws: sandbox_world.LocalAws, fake_slack: FakeSlack) -> None:
    """What the image runs, run here (no Docker engine on this machine): its CMD, and its
    HEALTHCHECK command against it."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = _json_instruction(dockerfile, "CMD")
    assert cmd == ["python", "-m", "bot", "serve", "--host", "0.0.0.0"]
    healthcheck = dockerfile.replace("\\\n", " ")
    probe = json.loads(healthcheck[healthcheck.index("CMD [", healthcheck.index("HEALTHCHECK"))
                                   + 4:].splitlines()[0])
    assert "USER cordon" in dockerfile and "FROM python:3.11-slim AS build" in dockerfile
    port = free_port()
    env = env_for(local_aws, SLACK_BOT_TOKEN="xoxb-test", SLACK_SIGNING_SECRET=SECRET,
                  SLACK_API_URL=fake_slack.api_url, PORT=str(port),
                  CORDON_DATABASE_URL=f"sqlite:///{tmp_path}/cordon.db")
    proc = subprocess.Popen([sys.executable, *cmd[1:]],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: health(port) == 200, timeout=30)
        probe_run = subprocess.run([sys.executable, *probe[1:]], env=env, timeout=30)
        assert probe_run.returncode == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    # With nothing listening, the health check fails.
    assert subprocess.run([sys.executable, *probe[1:]], env=env, timeout=30,
                          capture_output=True).returncode != 0


def test_prepare_without_credentials_fails_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(PYTHONPATH=str(ROOT), AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_CONFIG_FILE=str(tmp_path / "none"), AWS_EC2_METADATA_DISABLED="true",
               CORDON_REGIONS="us-east-1")
    proc = subprocess.run([sys.executable, "-m", "bot", "prepare"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert "nothing made" in line and "us-east-1" in line and "credentials" in line
