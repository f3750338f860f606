"""`python -m bot serve | sandbox | prepare | policy | template | preflight`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from bot.logs import setup_logging
from bot.settings import RegionSettings, SettingsError, load_settings

log = logging.getLogger("cordon")



def _port(text: str) -> int:
    """A TCP port, 1–65535 (argparse says which was wrong, in one line)."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1-65535)")
    return int(text)

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bot", description="Cordon")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the bot (HTTP, or Socket Mode with SLACK_APP_TOKEN)")
    serve.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve.add_argument("--port", type=_port, default=None, help="default: $PORT or 3000")
    sandbox = sub.add_parser("sandbox", help="play an incident against a local AWS and Slack")
    sandbox.add_argument("--quiet", action="store_true", help="only the transcript")
    sandbox.add_argument("--playbook", default="full",
                         choices=("full", "isolate", "nacl", "route", "igw", "key"),
                         help="the playbook to play (default: full)")
    policy = sub.add_parser("policy", help="print the IAM policy Cordon's role needs (JSON)")
    policy.add_argument("--playbook", action="append", metavar="NAME",
                        help="only what these playbooks need (default: all)")
    policy.add_argument("--partition", default="aws", choices=("aws", "aws-cn", "aws-us-gov"),
                        help="the partition its ARNs name (default: aws)")
    template = sub.add_parser("template", help="print the CloudFormation template of the AWS "
                              "side: the role, the findings queue and its EventBridge rules")
    kind = template.add_mutually_exclusive_group()
    kind.add_argument("--member", action="store_true",
                      help="the role for member accounts instead (for a StackSet)")
    kind.add_argument("--forwarding", action="store_true",
                      help="the rules of another region, sending to the central region")
    template.add_argument("--product", action="append", metavar="NAME",
                          help="Security Hub products whose findings the rules pass "
                               "(default: $CORDON_FINDINGS_PRODUCTS or GuardDuty)")
    template.add_argument("--playbook", action="append", metavar="NAME",
                          help="only what these playbooks need (default: all)")
    sub.add_parser("preflight", help="check Slack, the database and AWS; exit 0 when all pass")
    prepare = sub.add_parser("prepare", help="create the isolation groups ahead of time")
    prepare.add_argument("--region", action="append", help="default: every CORDON_REGIONS")
    prepare.add_argument("--vpc", action="append", help="default: every VPC in the region")
    args = parser.parse_args(argv)

    try:
        if args.command == "serve":
            return run_serve(args.host, args.port)
        if args.command == "policy":
            return run_policy(args.playbook, partition=args.partition)
        if args.command == "template":
            return run_policy(args.playbook, "member" if args.member else "forwarding"
                              if args.forwarding else "central", products=args.product)
        if args.command == "preflight":
            from bot.preflight import run_preflight

            return run_preflight()
        if args.command == "sandbox":
            try:
                from sandbox.run import run_sandbox
            except ImportError as exc:
                print(f"the sandbox is not part of this installation ({exc.name}): install "
                      "cordon[sandbox] from a source checkout", file=sys.stderr)
                return 2
            return run_sandbox(quiet=args.quiet, playbook=args.playbook)
        return run_prepare(args.region, args.vpc)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2


def run_serve(host: str, port: int | None) -> int:
    settings = load_settings()
    setup_logging(settings.log_format, settings.log_level)
    from bot.scheduler import start_scheduler
    from bot.server import SlackHTTPServer
    from bot.wiring import build_app, build_deps

    try:
        deps = build_deps(settings)
    except Exception as exc:  # the store is opened (and migrated) first
        raise SettingsError(database_error(exc)) from None
    app = build_app(settings, deps)
    if not settings.approvers:
        log.warning("CORDON_APPROVERS is empty: nobody can approve a containment")
    # Runs left by an earlier life of this process are taken over at once, before anything
    # else: one of them may have left an instance on the allow-all group.
    deps.worker.resume_interrupted()
    scheduler = start_scheduler(deps, settings.sweep_interval, settings.lease_seconds / 4,
                                settings.watch_interval)
    from bot.intake import IntakeThread, build_intake

    intake = build_intake(settings, deps)
    intake_thread = IntakeThread(intake).start() if intake is not None else None
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    # The HTTP server runs in Socket Mode too: it serves /healthz.
    try:
        server = SlackHTTPServer(app, host, port or settings.port, deps.store.health,
                                 metrics=deps.metrics.wsgi() if deps.metrics else None)
    except OSError as exc:
        scheduler.shutdown(wait=False)
        if intake_thread is not None:
            intake_thread.stop()
        deps.worker.shutdown(wait=False)
        raise SettingsError(f"cordon: cannot listen on {host}:{port or settings.port}: "
                            f"{exc.strerror or exc} (another process has the port? set PORT "
                            "or --port)") from None
    server.start()
    if settings.slack_app_token:
        from slack_bolt.adapter.socket_mode import SocketModeHandler

        handler = SocketModeHandler(app, settings.slack_app_token)
        threading.Thread(target=connect_socket_mode, args=(handler, stopping, server.url),
                         name="cordon-socket", daemon=True).start()
        stopping.wait()
        handler.close()
    else:
        log.info("listening", extra={"url": f"{server.url}/slack/events"})
        stopping.wait()
    server.stop()
    deps.listeners.shutdown(wait=True)  # the lazy halves of requests already acked
    if intake_thread is not None:
        intake_thread.stop()  # a message being handled is finished, or delivered again
    scheduler.shutdown(wait=False)
    # Runs in progress finish their current step; an unfinished run resumes at next start.
    deps.worker.shutdown(wait=True)
    deps.timeline.close()
    log.info("stopped")
    return 0


def connect_socket_mode(handler: object, stopping: threading.Event, health_url: str) -> None:
    """Open the WebSocket; while Slack cannot be reached, try again with backoff (runs go
    on meanwhile). Once open, slack_sdk reconnects by itself."""
    delay = 1.0
    while not stopping.is_set():
        try:
            handler.connect()  # type: ignore[attr-defined]
        except Exception as exc:
            log.warning("Socket Mode: Slack cannot be reached; trying again",
                        extra={"in_seconds": delay, "error": str(exc)[:200]})
            stopping.wait(delay)
            delay = min(60.0, delay * 2)
            continue
        log.info("connected with Socket Mode", extra={"health": f"{health_url}/healthz"})
        return


def database_error(exc: Exception) -> str:
    """One line with the real cause: unreachable, refused login, missing driver."""
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = cause[0][:200] if cause else type(exc).__name__
    if "Can't load plugin" in first and "postgres" in first:
        return ("cordon: cannot open the database: no driver for that URL — write it as "
                "postgresql+psycopg://user:pass@host:5432/db (check CORDON_DATABASE_URL)")
    return (f"cordon: cannot open the database ({type(exc).__name__}): {first} "
            "(check CORDON_DATABASE_URL)")


def run_policy(playbooks: list[str] | None, template: str | None = None,
               partition: str = "aws", products: list[str] | None = None) -> int:
    """The IAM policy (JSON); with `template`, the CloudFormation template ("central",
    "forwarding" or "member") that deploys it."""
    import json

    from bot.settings import split_list
    from playbooks.catalogue import PLAYBOOKS
    from playbooks.operations import iam_policy
    from playbooks.template import central_template, forwarding_template, member_template

    chosen = tuple(products or split_list(os.environ.get("CORDON_FINDINGS_PRODUCTS"))
                   or ["GuardDuty"])
    unknown = [p for p in playbooks or [] if p not in PLAYBOOKS]
    if unknown:
        print(f"unknown playbook(s): {', '.join(unknown)}; playbooks: {', '.join(PLAYBOOKS)}",
              file=sys.stderr)
        return 2
    if template == "member":
        document = member_template(playbooks)
    elif template == "forwarding":
        document = forwarding_template(chosen)
    elif template == "central":
        document = central_template(playbooks, chosen)
    else:
        document = iam_policy(playbooks, partition)
    print(json.dumps(document, indent=2))
    return 0


def run_prepare(regions: list[str] | None, vpcs: list[str] | None) -> int:
    setup_logging("text", "WARNING")
    from playbooks.errors import CordonError
    from playbooks.operations import client_pool, prepare_isolation

    regions = regions or RegionSettings().regions
    try:
        rows = prepare_isolation(client_pool(), regions, vpcs)
    except CordonError as exc:
        print(f"cordon prepare: nothing made — {exc}", file=sys.stderr)
        return 1
    for row in rows:
        made = f" (created {', '.join(row['created'])})" if row["created"] else " (existed)"
        print(f"{row['region']} {row['vpc_id']} cordon-open={row['open']} "
              f"cordon-sealed={row['sealed']}{made}")
    if not rows:
        print("no VPC found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
