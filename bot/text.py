"""Text that people typed is escaped before Slack shows it, so that it can never
become a live mention (`<!channel>`, `<@U…>`) or a link."""

from __future__ import annotations


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
