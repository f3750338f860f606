"""Bolt listeners: ack first, slow work in lazy listeners, one call into playbooks/."""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from typing import Any

from bot.blocks import render_error
from playbooks.errors import CordonError, is_store_outage

log = logging.getLogger("cordon.listeners")


def replies_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """A lazy listener's typed errors become a short ephemeral answer to the person;
    anything else is logged with a reference they can quote."""

    @functools.wraps(fn)
    def wrapper(respond: Callable[..., Any], **kwargs: Any) -> None:
        try:
            fn(respond=respond, **kwargs)
        except CordonError as exc:
            respond(text=render_error(exc), response_type="ephemeral",
                    replace_original=False)
        except Exception as exc:
            if is_store_outage(exc):
                log.warning("database did not answer", extra={"error": str(exc)[:200]})
                respond(text=render_error(
                    "Cordon's database did not answer in time (locked or unavailable), so "
                    "this was not recorded. Try again in a minute; `/contain status` shows "
                    "what is recorded."), response_type="ephemeral", replace_original=False)
                return
            ref = secrets.token_hex(4)
            log.exception("listener failed", extra={"ref": ref})
            respond(text=render_error(f"Cordon hit an internal error (ref `{ref}`). "
                                      "Check `/contain status` before trying again."),
                    response_type="ephemeral", replace_original=False)

    return wrapper
