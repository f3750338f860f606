"""A local stand-in for Slack's Web API, over real HTTP. It keeps channels, threads,
ephemeral replies and every call, so that the sandbox can print a transcript and the
tests can assert what a person in the channel would see."""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from sandbox.slack_rules import message_problems


@dataclass
class Message:
    channel: str
    ts: str
    text: str
    blocks: list[dict[str, Any]] = field(default_factory=list)
    thread_ts: str | None = None
    user: str = "UCORDONBOT"
    edits: int = 0
    files: list[dict[str, Any]] = field(default_factory=list)
    metadata: dict[str, Any] | None = None
    broadcast: bool = False  # a thread reply also sent to the channel (reply_broadcast)


@dataclass
class Ephemeral:
    text: str
    via: str  # "response_url" or "chat.postEphemeral"
    user: str | None = None
    channel: str | None = None


class FakeSlack:
    BOT_USER = "UCORDONBOT"

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.lock = threading.RLock()
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.messages: list[Message] = []
        self.ephemerals: list[Ephemeral] = []
        self.usergroups: dict[str, list[str]] = {}
        self.not_in: set[str] = set()  # channels the bot was not invited to
        self.failures: dict[str, list[str]] = {}  # method → errors to answer next
        # method → HTTP faults to answer next: (status, applied first?, Retry-After)
        self.http_faults: dict[str, list[tuple[int, bool, int | None]]] = {}
        self.response_owners: dict[str, str | None] = {}
        self.uploads: dict[str, dict[str, Any]] = {}  # file id → name and bytes
        self.socket_url = ""  # Socket Mode: where apps.connections.open points
        self.views: dict[str, dict[str, Any]] = {}  # open modals by view id
        self.homes: dict[str, dict[str, Any]] = {}  # App Home tab by user
        # What Slack would refuse or misread in what Cordon sent (sandbox.slack_rules).
        self.violations: list[str] = []
        self._view_ids = itertools.count(1)
        self._file_ids = itertools.count(1)
        self._ts = itertools.count(1)
        self._response_urls = itertools.count(1)
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                        name="fake-slack")

    # lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    def start(self) -> FakeSlack:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        with self.lock:
            self.violations.clear()
            self.calls.clear()
            self.messages.clear()
            self.ephemerals.clear()
            self.usergroups.clear()
            self.not_in.clear()
            self.uploads.clear()
            self.failures.clear()
            self.http_faults.clear()
            self.views.clear()
            self.homes.clear()

    def new_response_url(self, user: str | None = None) -> str:
        path = f"/response/{next(self._response_urls)}"
        with self.lock:
            self.response_owners[path] = user
        return self.url + path

    def fail_next(self, method: str, error: str, times: int = 1, after: int = 0) -> None:
        """The next `times` calls of `method` answer `error`, once `after` more have
        gone through."""
        with self.lock:
            self.failures.setdefault(method, []).extend([""] * after + [error] * times)

    def fail_http(self, method: str, status: int, applied: bool = False,
                  retry_after: int | None = None, times: int = 1) -> None:
        """Answer the next calls of `method` with an HTTP error: 429 (with Retry-After),
        or a 5xx — after carrying the call out when `applied` (the answer is lost, the
        message was posted)."""
        with self.lock:
            self.http_faults.setdefault(method, []).extend(
                [(status, applied, retry_after)] * times)

    def http_fault(self, method: str) -> tuple[int, bool, int | None] | None:
        with self.lock:
            pending = self.http_faults.get(method)
            return pending.pop(0) if pending else None

    # what a person sees ---------------------------------------------------------------

    def channel_messages(self, channel: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.channel == channel and m.thread_ts is None]

    def thread(self, channel: str, ts: str) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.channel == channel and m.thread_ts == ts]

    def message(self, channel: str, ts: str) -> Message | None:
        with self.lock:
            return next((m for m in self.messages if m.channel == channel and m.ts == ts), None)

    def ephemerals_for(self, user: str) -> list[str]:
        with self.lock:
            return [e.text for e in self.ephemerals if e.user == user]

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        with self.lock:
            return [args for name, args in self.calls if name == method]

    # the API ------------------------------------------------------------------------

    def _next_ts(self) -> str:
        return f"{int(time.time())}.{next(self._ts):06d}"

    def _check(self, method: str, args: dict[str, Any]) -> None:
        payload = dict(args)
        for key in ("blocks", "view"):
            if isinstance(payload.get(key), str):
                try:
                    payload[key] = json.loads(payload[key])
                except ValueError:
                    self.violations.append(f"{method}: {key} is not JSON")
        self.violations += message_problems(method, payload)

    def handle(self, method: str, args: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append((method, args))
            self._check(method, args)
            pending = self.failures.get(method)
            if pending and (error := pending.pop(0)):
                return {"ok": False, "error": error}
            handler = getattr(self, "api_" + method.replace(".", "_"), None)
            if handler is None:
                return {"ok": False, "error": "unknown_method"}
            result: dict[str, Any] = handler(args)
            return result

    SCOPES = ("commands,chat:write,files:write,usergroups:read,channels:history,"
              "groups:history")

    def api_auth_test(self, args: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://sandbox.slack.local/", "team": "Sandbox",
                "user": "cordon", "team_id": "T0SANDBOX", "user_id": self.BOT_USER,
                "bot_id": "B0CORDON"}

    def _blocks(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        blocks = args.get("blocks") or []
        return json.loads(blocks) if isinstance(blocks, str) else list(blocks)

    def api_chat_postMessage(self, args: dict[str, Any]) -> dict[str, Any]:
        channel = args.get("channel", "")
        if channel in self.not_in:
            return {"ok": False, "error": "not_in_channel"}
        if not args.get("text") and not args.get("blocks"):
            return {"ok": False, "error": "no_text"}
        thread_ts = args.get("thread_ts")
        if thread_ts and self.message(channel, thread_ts) is None:
            return {"ok": False, "error": "thread_not_found"}
        metadata = args.get("metadata")
        if isinstance(metadata, str):
            metadata = json.loads(metadata)
        msg = Message(channel=channel, ts=self._next_ts(), text=args.get("text", ""),
                      blocks=self._blocks(args), thread_ts=thread_ts, metadata=metadata,
                      broadcast=bool(thread_ts) and str(args.get("reply_broadcast", ""))
                      .lower() in ("1", "true"))
        self.messages.append(msg)
        return {"ok": True, "channel": channel, "ts": msg.ts,
                "message": {"text": msg.text, "ts": msg.ts}}

    def api_conversations_replies(self, args: dict[str, Any]) -> dict[str, Any]:
        channel, ts = args.get("channel", ""), args.get("ts", "")
        root = self.message(channel, ts)
        if root is None:
            return {"ok": False, "error": "thread_not_found"}
        with_metadata = str(args.get("include_all_metadata", "")).lower() in ("1", "true")
        out = []
        for m in [root, *self.thread(channel, ts)]:
            item: dict[str, Any] = {"ts": m.ts, "text": m.text, "thread_ts": m.thread_ts or m.ts}
            if m.files:
                item["files"] = [{"id": f["id"], "title": f.get("title"),
                                  "name": f.get("name")} for f in m.files]
            if with_metadata and m.metadata:
                item["metadata"] = m.metadata
            out.append(item)
        return {"ok": True, "messages": out, "has_more": False}

    def api_chat_update(self, args: dict[str, Any]) -> dict[str, Any]:
        msg = self.message(args.get("channel", ""), args.get("ts", ""))
        if msg is None:
            return {"ok": False, "error": "message_not_found"}
        msg.text = args.get("text", msg.text)
        if "blocks" in args:
            msg.blocks = self._blocks(args)
        msg.edits += 1
        return {"ok": True, "channel": msg.channel, "ts": msg.ts}

    def api_chat_postEphemeral(self, args: dict[str, Any]) -> dict[str, Any]:
        self.ephemerals.append(Ephemeral(text=args.get("text", ""), via="chat.postEphemeral",
                                         user=args.get("user"), channel=args.get("channel")))
        return {"ok": True, "message_ts": self._next_ts()}

    def api_apps_connections_open(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.socket_url:
            return {"ok": False, "error": "socket_mode_not_enabled"}
        return {"ok": True, "url": self.socket_url}

    def api_usergroups_users_list(self, args: dict[str, Any]) -> dict[str, Any]:
        group = args.get("usergroup", "")
        if group not in self.usergroups:
            return {"ok": False, "error": "no_such_subteam"}
        return {"ok": True, "users": list(self.usergroups[group])}

    def api_files_getUploadURLExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        if not args.get("filename") or not args.get("length"):
            return {"ok": False, "error": "invalid_arguments"}
        file_id = f"F{next(self._file_ids):08d}"
        self.uploads[file_id] = {"name": args["filename"], "content": None}
        return {"ok": True, "upload_url": f"{self.url}/upload/{file_id}", "file_id": file_id}

    def upload(self, file_id: str, content: bytes) -> bool:
        with self.lock:
            if file_id not in self.uploads:
                return False
            self.uploads[file_id]["content"] = content
            return True

    def api_files_completeUploadExternal(self, args: dict[str, Any]) -> dict[str, Any]:
        files = json.loads(args.get("files") or "[]")
        if any(self.uploads.get(f["id"], {}).get("content") is None for f in files):
            return {"ok": False, "error": "upload_not_complete"}
        channel, thread_ts = args.get("channel_id", ""), args.get("thread_ts")
        if thread_ts and self.message(channel, thread_ts) is None:
            return {"ok": False, "error": "thread_not_found"}
        shared = [{"id": f["id"], "title": f.get("title"), **self.uploads[f["id"]]}
                  for f in files]
        self.messages.append(Message(channel=channel, ts=self._next_ts(),
                                     text=args.get("initial_comment", ""),
                                     thread_ts=thread_ts, files=shared))
        return {"ok": True, "files": [{"id": f["id"], "title": f["title"]} for f in shared]}

    # views: what Slack checks of a view (Block Kit reference: a modal's title, submit and
    # close at most 24 characters, 100 blocks, private_metadata 3,000 characters; a
    # trigger_id is good for one views.open).

    def _check_view(self, view: dict[str, Any]) -> str | None:
        if view.get("type") == "modal":
            for key in ("title", "submit", "close"):
                if key in view and len(view[key]["text"]) > 24:
                    return f"invalid_arguments: {key} over 24 characters"
        if len(view.get("blocks", [])) > 100:
            return "invalid_arguments: over 100 blocks"
        if len(view.get("private_metadata", "")) > 3000:
            return "invalid_arguments: private_metadata over 3000 characters"
        return None

    def _view_arg(self, args: dict[str, Any]) -> dict[str, Any]:
        view = args.get("view") or {}
        return json.loads(view) if isinstance(view, str) else dict(view)

    def api_views_open(self, args: dict[str, Any]) -> dict[str, Any]:
        trigger = args.get("trigger_id", "")
        if not trigger or any(v["trigger_id"] == trigger for v in self.views.values()):
            return {"ok": False, "error": "invalid_trigger_id"}
        view = self._view_arg(args)
        if error := self._check_view(view):
            return {"ok": False, "error": error}
        view_id = f"V{next(self._view_ids):08d}"
        self.views[view_id] = {"view": view, "trigger_id": trigger, "updates": 0}
        return {"ok": True, "view": {**view, "id": view_id}}

    def api_views_update(self, args: dict[str, Any]) -> dict[str, Any]:
        view_id = args.get("view_id", "")
        if view_id not in self.views:
            return {"ok": False, "error": "not_found"}
        view = self._view_arg(args)
        if error := self._check_view(view):
            return {"ok": False, "error": error}
        self.views[view_id]["view"] = view
        self.views[view_id]["updates"] += 1
        return {"ok": True, "view": {**view, "id": view_id}}

    def api_views_publish(self, args: dict[str, Any]) -> dict[str, Any]:
        view = self._view_arg(args)
        if view.get("type") != "home":
            return {"ok": False, "error": "invalid_arguments"}
        if error := self._check_view(view):
            return {"ok": False, "error": error}
        self.homes[args.get("user_id", "")] = view
        return {"ok": True, "view": {**view, "id": f"VHOME{args.get('user_id', '')}"}}

    def submitted(self, view_id: str, view: dict[str, Any]) -> None:
        """A view_submission answered with response_action=update replaces the view."""
        with self.lock:
            if view_id in self.views:
                self.views[view_id]["view"] = view

    def response_url(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            self.calls.append(("response_url", {"path": path, **payload}))
            self._check("response_url", payload)
            if payload.get("response_type") == "in_channel":
                return {"ok": False, "error": "not_supported_here"}
            self.ephemerals.append(Ephemeral(text=payload.get("text", ""), via="response_url",
                                             user=self.response_owners.get(path)))
            return {"ok": True}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _raw(self) -> bytes:
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _read(self) -> dict[str, Any]:
                parts = urlsplit(self.path)
                args: dict[str, Any] = dict(parse_qsl(parts.query))
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode() if length else ""
                if raw:
                    if "json" in (self.headers.get("Content-Type") or ""):
                        args.update(json.loads(raw))
                    else:
                        args.update(dict(parse_qsl(raw)))
                return args

            def _reply(self, payload: dict[str, Any], status: int = 200,
                       headers: dict[str, str] | None = None) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("x-oauth-scopes", fake.SCOPES)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _dispatch(self) -> None:
                path = urlsplit(self.path).path
                if path.startswith("/upload/"):
                    ok = fake.upload(path.rsplit("/", 1)[-1], self._raw())
                    body = b"OK" if ok else b"not found"
                    self.send_response(200 if ok else 404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                args = self._read()
                if path.startswith("/api/"):
                    auth = self.headers.get("Authorization") or f"Bearer {args.get('token', '')}"
                    app_level = path == "/api/apps.connections.open"
                    # Any token of the right kind works, but one a workspace revoked.
                    if not auth.startswith("Bearer xapp-" if app_level else "Bearer xoxb-") \
                            or auth.endswith("-revoked"):
                        self._reply({"ok": False, "error": "invalid_auth"})
                        return
                    method = path[len("/api/"):]
                    fault = fake.http_fault(method)
                    if fault is None:
                        self._reply(fake.handle(method, args))
                        return
                    status, applied, retry_after = fault
                    if applied:
                        fake.handle(method, args)  # carried out; the answer is lost
                    else:
                        with fake.lock:
                            fake.calls.append((method, args))
                    extra = {"Retry-After": str(retry_after)} if retry_after is not None else {}
                    self._reply({"ok": False, "error": "ratelimited" if status == 429
                                 else "internal_error"}, status, extra)
                elif path.startswith("/response/"):
                    self._reply(fake.response_url(path, args))
                else:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            do_GET = _dispatch
            do_POST = _dispatch

        return Handler
