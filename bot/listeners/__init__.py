"""Bolt listeners: ack first, slow work in lazy listeners, one call into playbooks/."""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from typing import Any

from bot.blocks import render_error
from playbooks.errors import CordonError

log = logging.getLogger("cordon.listeners")


def replies_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """A lazy listener's typed errors become a short ephemeral answer to the person;
    anything else is logged with a reference they can quote."""

    @functools.wraps(fn)
    def wrapper(respond: Callable[..., Any], **kwargs: Any) -> None:
        try:
            fn(respond=respond, **kwargs)
        except CordonError as exc:
            respond(text=render_error(str(exc)), response_type="ephemeral",
                    replace_original=False)
        except Exception:
            ref = secrets.token_hex(4)
            log.exception("listener failed", extra={"ref": ref})
            respond(text=render_error(f"Cordon hit an internal error (ref `{ref}`). "
                                      "Check `/contain status` before trying again."),
                    response_type="ephemeral", replace_original=False)

    return wrapper
