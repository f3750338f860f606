"""Structured logs: one line per event, with the incident id on every line."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from playbooks.logctx import current_incident

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "incident"}


class _IncidentFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "incident", None):
            record.incident = current_incident.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "incident": getattr(record, "incident", "-"),
            "event": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        base = f"{record.levelname.lower():7} incident={getattr(record, 'incident', '-')} "
        text = base + f"{record.name}: {record.getMessage()} {extra}".rstrip()
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging(fmt: str = "json", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_IncidentFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("botocore", "urllib3", "werkzeug", "apscheduler", "slack_bolt", "slack_sdk",
                  "alembic", "waitress"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
