"""HTTP endpoint: `POST /slack/events` (slash commands, interactivity, events) and
`GET /healthz` (the database answers). Signature verification is Bolt's, always on."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

from slack_bolt import App, BoltRequest

log = logging.getLogger("cordon.http")

MAX_BODY = 1 << 20  # Slack payloads are far smaller


class SlackHTTPServer:
    def __init__(self, app: App, host: str, port: int, health: Callable[[], bool]) -> None:
        self.app = app
        self.health = health
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        host = str(self.httpd.server_address[0])
        return f"http://{host}:{self.port}"

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http %s %s", self.command, self.path)

            def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if urlsplit(self.path).path != "/healthz":
                    self._send(404, b"not found", {"Content-Type": "text/plain"})
                    return
                try:
                    ok = server.health()
                except Exception as exc:
                    log.warning("health check failed", extra={"error": str(exc)[:200]})
                    ok = False
                body = json.dumps({"ok": ok}).encode()
                self._send(200 if ok else 503, body, {"Content-Type": "application/json"})

            def do_POST(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/slack/events":
                    self._send(404, b"not found", {"Content-Type": "text/plain"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length > MAX_BODY:
                    self._send(413, b"too large", {"Content-Type": "text/plain"})
                    return
                body = self.rfile.read(length).decode("utf-8")
                headers: dict[str, str | Sequence[str]] = {
                    k.lower(): v for k, v in self.headers.items()}
                resp = server.app.dispatch(
                    BoltRequest(body=body, query=parts.query, headers=headers)
                )
                out = {k: v[0] if isinstance(v, list) else str(v)
                       for k, v in resp.headers.items() if v}
                self._send(resp.status, resp.body.encode("utf-8"), out)

        return Handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="cordon-http",
                                        daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
