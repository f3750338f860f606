"""HTTP endpoint, served by waitress (a production WSGI server: request and connection
timeouts, a body limit, a thread pool): `POST /slack/events` (slash commands,
interactivity, events) through Bolt's WSGI adapter, with Bolt's signature verification
always on, `GET /healthz` (the database takes a write) and `GET /metrics` (Prometheus'
text format, see bot.metrics). A malformed request gets a
400 and no traceback."""

from __future__ import annotations

import io
import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from waitress import wasyncore
from waitress.server import create_server

log = logging.getLogger("cordon.http")

MAX_BODY = 1 << 20  # Slack payloads are far smaller
Health = Callable[[], tuple[bool, str]]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def wsgi_app(app: App, health: Health, metrics: WsgiApp | None = None) -> WsgiApp:
    bolt = SlackRequestHandler(app, path="/slack/events")

    def reply(start_response: StartResponse, status: str, body: bytes,
              content_type: str = "text/plain; charset=utf-8") -> list[bytes]:
        start_response(status, [("Content-Type", content_type),
                                ("Content-Length", str(len(body)))])
        return [body]

    def application(environ: dict[str, Any], start_response: StartResponse
                    ) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "")
        if path == "/healthz" and method in ("GET", "HEAD"):
            try:
                ok, why = health()
            except Exception as exc:
                ok, why = False, f"{type(exc).__name__}: {str(exc)[:200]}"
            if not ok:
                log.warning("health check failed", extra={"why": why})
            body = json.dumps({"ok": ok, "database": why}).encode()
            return reply(start_response, "200 OK" if ok else "503 Service Unavailable", body,
                         "application/json")
        if path == "/metrics" and method in ("GET", "HEAD") and metrics is not None:
            return metrics(environ, start_response)
        if path != "/slack/events":
            return reply(start_response, "404 Not Found", b"not found")
        if method != "POST":
            return reply(start_response, "405 Method Not Allowed", b"POST only")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return reply(start_response, "400 Bad Request", b"bad Content-Length")
        if length > MAX_BODY:
            return reply(start_response, "413 Payload Too Large", b"too large")
        body = environ["wsgi.input"].read(length) if length else b""
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            return reply(start_response, "400 Bad Request", b"the body is not UTF-8")
        environ["wsgi.input"] = io.BytesIO(body)
        return bolt(environ, start_response)

    return application


class SlackHTTPServer:
    def __init__(self, app: App, host: str, port: int, health: Health,
                 threads: int = 16, metrics: WsgiApp | None = None) -> None:
        self.app = app
        self.health = health
        self._server = create_server(
            wsgi_app(app, health, metrics), host=host, port=port, threads=threads,
            channel_timeout=30,  # an idle or trickling connection is closed
            max_request_body_size=MAX_BODY, max_request_header_size=64 * 1024,
            clear_untrusted_proxy_headers=True, ident="cordon")
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def url(self) -> str:
        return f"http://{self._server.effective_host}:{self.port}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.run, name="cordon-http",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop: the requests being answered finish first, then every connection and the
        listening socket are closed."""
        server = self._server
        server.task_dispatcher.shutdown(cancel_pending=False, timeout=5)
        if self._thread is not None and self._thread.is_alive():
            # Closed from the server's own loop thread, which then finds nothing left to
            # serve and returns (closing from here would pull sockets from under it).
            server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
            self._thread.join(timeout=5)
        else:
            wasyncore.close_all(server._map)
