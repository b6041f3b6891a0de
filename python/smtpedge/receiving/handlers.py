"""Handler hooks, as in aiosmtpd: an object with optional coroutine methods
``handle_<VERB>(server, session, envelope, ...)``.

Each hook returns a reply string (``"550 5.7.1 Not here"``) to override the
default, or None to keep it. Hook names are checked when the server starts:
a misspelt ``handle_`` method is an error, never a silent no-op.

    handle_PROXY(server, session, envelope, header) -> bool | None
    handle_HELO(server, session, envelope, hostname) -> str | None
    handle_EHLO(server, session, envelope, hostname, responses) -> list[str] | str | None
    handle_MAIL(server, session, envelope, address, mail_options) -> str | None
    handle_RCPT(server, session, envelope, address, rcpt_options) -> str | None
    handle_DATA(server, session, envelope) -> str | None
    handle_VRFY(server, session, envelope, address) -> str | None
    handle_RSET(server, session, envelope) -> None
    handle_QUIT(server, session, envelope) -> None

Without ``handle_DATA`` (or when it returns None) the server puts the message
in its durable queue and answers 250 with the queue ID; a ``handle_DATA`` that
returns a reply owns the message (call ``await server.queue_message(session,
envelope)`` to queue it yourself).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

__all__ = ["HOOKS", "HandlerError", "check_handler"]

HOOKS = frozenset(
    ("PROXY", "HELO", "EHLO", "MAIL", "RCPT", "DATA", "VRFY", "RSET", "QUIT")
)  # fmt: skip


class HandlerError(TypeError):
    """A handler with a misspelt or non-coroutine hook."""


def check_handler(handler: Any) -> dict[str, Any]:
    """Return the handler's hooks by verb; raise HandlerError on any method
    whose name starts with ``handle_`` but is not a known hook, or a hook that
    is not a coroutine function."""
    hooks: dict[str, Any] = {}
    if handler is None:
        return hooks
    names = [f"handle_{v}" for v in sorted(HOOKS)]
    for attr in dir(handler):
        if not attr.lower().startswith("handle_"):
            continue
        verb = attr[len("handle_") :]
        if verb not in HOOKS:
            close = difflib.get_close_matches(attr, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise HandlerError(f"{type(handler).__name__}.{attr} is not a known hook{hint}")
        fn = getattr(handler, attr)
        if not inspect.iscoroutinefunction(fn):
            raise HandlerError(f"{type(handler).__name__}.{attr} must be an async def coroutine")
        hooks[verb] = fn
    return hooks
