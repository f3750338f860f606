"""Renders the fake Slack's channel and threads as a readable transcript."""

from __future__ import annotations

import html
import re
from typing import Any

from sandbox.fake_slack import FakeSlack, Message

_DATE = re.compile(r"<!date\^\d+\^[^|]*\|([^>]*)>")
_USER = re.compile(r"<@([UW][A-Z0-9]+)>")
_LINK = re.compile(r"<https?://[^|>]*\|([^>]*)>")


def plain(text: str, names: dict[str, str]) -> str:
    text = _DATE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _USER.sub(lambda m: "@" + names.get(m.group(1), m.group(1)), text)
    return html.unescape(text)


def block_text(block: dict[str, Any], names: dict[str, str]) -> list[str]:
    kind = block.get("type")
    if kind == "header":
        return [f"## {block['text']['text']}"]
    if kind == "divider":
        return ["  ----"]
    if kind == "section":
        out = []
        if block.get("text"):
            out.extend(plain(block["text"]["text"], names).splitlines())
        for field in block.get("fields", []):
            out.append(plain(field["text"], names).replace("\n", ": ", 1))
        return out
    if kind == "context":
        return ["  " + " ".join(plain(e.get("text", ""), names) for e in block["elements"])]
    if kind == "actions":
        return ["  " + "  ".join(f"[ {e['text']['text']} ]" for e in block["elements"])]
    return []


def render_message(msg: Message, names: dict[str, str], indent: str) -> list[str]:
    lines = []
    for block in msg.blocks:
        lines.extend(block_text(block, names))
    if not msg.blocks:
        lines = plain(msg.text, names).splitlines()
    return [indent + line for line in lines]


def render_channel(fake: FakeSlack, channel: str, names: dict[str, str]) -> str:
    out = [f"#{names.get(channel, channel)}"]
    for msg in fake.channel_messages(channel):
        out.append("")
        out.extend(render_message(msg, names, "  "))
        replies = fake.thread(channel, msg.ts)
        if replies:
            out.append(f"  └─ thread ({len(replies)} replies)")
            for reply in replies:
                lines = render_message(reply, names, "     ")
                if lines:
                    lines[0] = "   ↳ " + lines[0].lstrip()
                out.extend(lines)
    return "\n".join(out)
