"""What Slack accepts and how it reads text, checked on everything Cordon sends to the
fake Slack: blocks through `slack_sdk`'s Block Kit models (their limits and required
fields), views likewise, and mrkdwn text for Slack's escaping rules — a `<` opens a link,
a mention or a command (`<!here>`), so any other must arrive as `&lt;`; an `&` in a link
must be `&amp;`; a message's text stays within Slack's recommended 4,000 characters."""

from __future__ import annotations

import re
from typing import Any

from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

TEXT_MAX = 4000
# The `<…>` forms Cordon may send: a user, a channel, a user group, a date, a link.
_TOKEN = re.compile(r"<(?:@[UW][A-Z0-9]+|#C[A-Z0-9]+(?:\|[^<>]*)?|!subteam\^S[A-Z0-9]+"
                    r"|!date\^[^<>]+|(?:https?|mailto):[^<>|\s]+(?:\|[^<>]*)?)>")
_BROADCAST = re.compile(r"<!(?:here|channel|everyone)(?:\|[^<>]*)?>")
_BARE_AMP = re.compile(r"&(?!amp;|lt;|gt;)")


def text_problems(text: str, where: str) -> list[str]:
    problems = []
    if _BROADCAST.search(text):
        problems.append(f"{where}: a broadcast mention went out: {text[:120]!r}")
    rest = _TOKEN.sub("", text)
    if "<" in rest or ">" in rest:
        at = max(rest.find("<"), rest.find(">"))
        problems.append(f"{where}: unescaped < or >: …{rest[max(0, at - 40):at + 40]!r}…")
    for link in re.findall(r"<(?:https?|mailto):[^<>|\s]+", text):
        if _BARE_AMP.search(link):
            problems.append(f"{where}: a raw & in a link: {link[:120]!r}")
    if len(text) > TEXT_MAX:
        problems.append(f"{where}: {len(text)} characters (Slack recommends {TEXT_MAX})")
    return problems


def _texts(node: Any) -> list[str]:
    """Every mrkdwn text inside blocks (plain_text is shown as is)."""
    found = []
    if isinstance(node, dict):
        if node.get("type") == "mrkdwn" and isinstance(node.get("text"), str):
            found.append(node["text"])
        for value in node.values():
            found += _texts(value)
    elif isinstance(node, list):
        for value in node:
            found += _texts(value)
    return found


def blocks_problems(blocks: list[dict[str, Any]], where: str) -> list[str]:
    problems = []
    for index, raw in enumerate(blocks):
        try:
            block = Block.parse(raw)
            if block is None:
                raise ValueError(f"unknown block type {raw.get('type')!r}")
            block.validate_json()
        except Exception as exc:
            problems.append(f"{where}: block {index} ({raw.get('type')}): {exc}")
    for text in _texts(blocks):
        problems += [p.replace(where, f"{where} (a block)") for p in
                     text_problems(text, where) if "characters" not in p]
    return problems


def view_problems(view: dict[str, Any], where: str) -> list[str]:
    try:
        View(**view).validate_json()
    except Exception as exc:
        return [f"{where}: view: {exc}"]
    return blocks_problems(view.get("blocks") or [], where)


def message_problems(method: str, args: dict[str, Any]) -> list[str]:
    """What Slack would refuse or misread in one API call's payload."""
    problems = []
    text = args.get("text")
    if isinstance(text, str) and args.get("mrkdwn", True) is not False:
        problems += text_problems(text, method)
    blocks = args.get("blocks")
    if blocks:
        problems += blocks_problems(blocks, method)
    for key in ("view",):
        if isinstance(args.get(key), dict):
            problems += view_problems(args[key], method)
    comment = args.get("initial_comment")
    if isinstance(comment, str):
        problems += text_problems(comment, method)
    return problems
