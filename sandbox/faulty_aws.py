"""A fault layer between Cordon and its (local) AWS: an HTTP proxy in front of moto's
server that forwards every request, except those a rule picks, which it answers the
way a real AWS fault looks from the client:

- `throttle`: the service's throttling error (EC2: 503 RequestLimitExceeded; the
  others: 400 Throttling), moto never sees the call;
- `unavailable`: 503 ServiceUnavailable, moto never sees the call;
- `refuse:<Code>`: a 400 with that error code (e.g. `refuse:UnsupportedOperation`),
  moto never sees the call;
- `drop`: moto applies the call, then the connection is closed without an answer
  (the client cannot know whether it landed);
- `rewrite:<old>=<new>`: forwarded, and the answer's text `<old>` replaced by `<new>`
  (e.g. a snapshot still `pending`, which moto never shows);
- `hold`: the request is kept unanswered until `release()`, then dropped without
  reaching AWS (as if the network lost it), so that a test can kill the caller, or
  take its lease, at exactly that point;
- `answer(action, reply)`: a JSON-protocol call answered 200 with `reply(request)`,
  moto never sees it — for what moto does not model (CloudTrail's LookupEvents).

`throttle_like_ec2()` adds EC2's request token buckets (one per API, AWS's documented
sizes, scaled): a call that finds its bucket empty is answered `RequestLimitExceeded`,
as AWS answers it, and never reaches moto.

A rule matches on the action name and the decoded parameters: `Action=…&Param=…` form
bodies (the query protocol of EC2, IAM, Auto Scaling, ELB), or the JSON protocol's
`X-Amz-Target` and body (SQS). The error answers are the query protocol's; `hold` and
`drop` work for either."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

Params = dict[str, str]

_EC2_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}'
              "</Code><Message>{message}</Message></Error></Errors><RequestID>fault</RequestID>"
              "</Response>")
_QUERY_ERROR = ('<?xml version="1.0" encoding="UTF-8"?><ErrorResponse><Error><Type>Sender'
                "</Type><Code>{code}</Code><Message>{message}</Message></Error>"
                "<RequestId>fault</RequestId></ErrorResponse>")


def error_xml(service: str, code: str, message: str) -> bytes:
    """An AWS error answer as the service's protocol words it (EC2's own XML, or the
    query protocol's): what both fault layers answer with."""
    template = _EC2_ERROR if service == "ec2" else _QUERY_ERROR
    return template.format(code=code, message=message).encode()


class _Server(ThreadingHTTPServer):
    # A fleet's calls arrive by the hundred at once: the default backlog (5) would refuse
    # connections that AWS would take.
    request_queue_size = 256


@dataclass
class Rule:
    action: str
    effect: str  # throttle | unavailable | refuse:<Code> | rewrite:<a>=<b> | drop | hold
    times: int = 1  # how many matching calls it answers (-1: every one)
    where: Callable[[Params], bool] | None = None
    hits: int = 0
    # effect "reply": the JSON answer to the decoded JSON request
    reply: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def matches(self, action: str, params: Params) -> bool:
        if self.times == 0 or action != self.action:
            return False
        return self.where is None or self.where(params)


@dataclass
class Seen:
    action: str
    params: Params
    service: str
    answered: str  # "forwarded" or the effect that answered it
    applied_at: float = 0.0  # monotonic time moto's answer came back (forwarded calls)


@dataclass
class FaultyAws:
    upstream: str
    rules: list[Rule] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    # Added to every request on its way in (the round trip to a real AWS region).
    latency: float = 0.0
    # EC2's token buckets, when emulated: API (or "describe"/"mutating") → (size, refill).
    ec2_limits: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._released = threading.Event()
        self._held = threading.Condition(self._lock)
        self.holding = 0
        self.httpd = _Server(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="faulty-aws")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def start(self) -> FaultyAws:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, action: str, effect: str, times: int = 1,
            where: Callable[[Params], bool] | None = None) -> Rule:
        rule = Rule(action, effect, times, where)
        with self._lock:
            self.rules.append(rule)
        return rule

    def answer(self, action: str, reply: Callable[[dict[str, Any]], dict[str, Any]],
               times: int = -1) -> Rule:
        """Answer a JSON-protocol action with `reply(request body)` (200), as AWS would."""
        rule = Rule(action, "reply", times, reply=reply)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.seen.clear()
        self.release()
        self._released = threading.Event()

    def release(self) -> None:
        """Let held requests go (they are forwarded) and hold no more."""
        with self._lock:
            for rule in self.rules:
                if rule.effect == "hold":
                    rule.times = 0
        self._released.set()

    def throttle_like_ec2(self, scale: float = 1.0,
                          limits: dict[str, tuple[float, float]] | None = None) -> None:
        """Answer EC2 calls as EC2's token buckets would (AWS's documented sizes and
        refills × `scale`, or `limits`), each bucket full now."""
        base = {"ModifyNetworkInterfaceAttribute": (100, 5), "CreateSnapshot": (100, 5),
                "CreateSnapshots": (100, 5), "CreateTags": (100, 10),
                "describe": (100, 20), "mutating": (50, 5), **(limits or {})}
        with self._lock:
            self.ec2_limits = {k: (s * scale, r * scale) for k, (s, r) in base.items()}
            self._tokens: dict[str, list[float]] = {}

    def _take_ec2_token(self, action: str) -> bool:
        """Whether the API's bucket had a token (taken); always, when not emulated."""
        if not self.ec2_limits:
            return True
        key = action if action in self.ec2_limits else (
            "describe" if action.startswith(("Describe", "Get")) else "mutating")
        size, refill = self.ec2_limits[key]
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._tokens.setdefault(action, [size, now])
            tokens = min(size, tokens + (now - stamp) * refill)
            taken = tokens >= 1
            self._tokens[action] = [tokens - 1 if taken else tokens, now]
        return taken

    def wait_held(self, count: int = 1, timeout: float = 30) -> bool:
        with self._held:
            return self._held.wait_for(lambda: self.holding >= count, timeout=timeout)

    def calls(self, action: str, where: Callable[[Params], bool] | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen
                    if s.action == action and (where is None or where(s.params))]

    # --------------------------------------------------------------------------------

    def _pick(self, action: str, params: Params) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.matches(action, params):
                    if rule.times > 0:
                        rule.times -= 1
                    rule.hits += 1
                    return rule
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _forward(self, body: bytes) -> tuple[int, dict[str, str], bytes]:
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "content-length", "connection")}
                req = urllib.request.Request(proxy.upstream + self.path, data=body or None,
                                             headers=headers, method=self.command)
                try:
                    with urllib.request.urlopen(req, timeout=60) as resp:
                        return resp.status, dict(resp.headers.items()), resp.read()
                except urllib.error.HTTPError as err:
                    return err.code, dict(err.headers.items()), err.read()

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection",
                                           "server", "date"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                params = dict(parse_qsl(body.decode("utf-8", "replace")))
                action = params.get("Action", "")
                target = self.headers.get("X-Amz-Target", "")
                decoded: dict[str, Any] = {}
                if not action and target:  # the JSON protocol (SQS, CloudTrail)
                    action = target.rsplit(".", 1)[-1]
                    try:
                        decoded = json.loads(body or b"{}")
                    except ValueError:
                        decoded = {}
                    params = {k: str(v) for k, v in decoded.items()}
                auth = self.headers.get("Authorization", "")
                service = auth.split("Credential=", 1)[-1].split("/")[3] if "/" in auth else ""
                rule = proxy._pick(action, params) if action else None
                effect = rule.effect if rule is not None else None
                if effect is None and service == "ec2" and not proxy._take_ec2_token(action):
                    effect = "throttle"  # the API's bucket is empty
                seen = Seen(action, params, service, effect or "forwarded")
                with proxy._lock:
                    proxy.seen.append(seen)
                if proxy.latency:
                    time.sleep(proxy.latency)
                if effect == "hold":
                    with proxy._held:
                        proxy.holding += 1
                        proxy._held.notify_all()
                    proxy._released.wait()
                    with proxy._held:
                        proxy.holding -= 1
                    self.close_connection = True
                    self.connection.close()
                    return
                if effect == "reply" and rule is not None and rule.reply is not None:
                    self._answer(200, {"Content-Type": "application/x-amz-json-1.1"},
                                 json.dumps(rule.reply(decoded), default=str).encode())
                    return
                if effect and effect.startswith("refuse:"):
                    code = effect.split(":", 1)[1]
                    if target:  # the JSON protocol words its errors in JSON
                        self._answer(400, {"Content-Type": "application/x-amz-json-1.1"},
                                     json.dumps({"__type": code,
                                                 "message": f"refused ({code})"}).encode())
                        return
                    self._answer(400, {"Content-Type": "text/xml"},
                                 error_xml(service, code, f"refused ({code})"))
                    return
                if effect in ("throttle", "unavailable"):
                    if effect == "throttle":
                        code = "RequestLimitExceeded" if service == "ec2" else "Throttling"
                        status = 503 if service == "ec2" else 400
                        message = "Request limit exceeded." if service == "ec2" else \
                            "Rate exceeded"
                    else:
                        code, status, message = ("ServiceUnavailable", 503,
                                                 "Service is unavailable")
                    self._answer(status, {"Content-Type": "text/xml"},
                                 error_xml(service, code, message))
                    return
                status, headers, answer = self._forward(body)
                seen.applied_at = time.monotonic()
                if effect and effect.startswith("rewrite:"):
                    before, _, after = effect.split(":", 1)[1].partition("=")
                    answer = answer.replace(before.encode(), after.encode())
                if effect == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                self._answer(status, headers, answer)

            do_POST = _handle
            do_GET = _handle

        return Handler
