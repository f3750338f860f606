"""Text that people typed is escaped before Slack shows it, so that it can never
become a live mention (`<!channel>`, `<@U…>`) or a link."""

from __future__ import annotations


def link(url: str, label: str) -> str:
    """`<url|label>` with both escaped as Slack asks (`&` in a URL is `&amp;`)."""
    return f"<{escape(url)}|{escape(label)}>"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
