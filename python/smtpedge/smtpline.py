"""SMTP command lines (RFC 5321, RFC 6531) and reply lines.

``parse_command(line)`` returns a ``Command`` (verb, argument, parsed ``path``
for MAIL/RCPT, ESMTP ``params`` in order with byte-exact values, BDAT
``chunk_size``/``last``) or raises ``SMTPSyntaxError`` whose ``reply`` is the
answer to send. ``parse_reply(line)`` reads a server's reply line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smtpedge._backend import impl as _impl
from smtpedge._pure.smtpline import DEFAULT_MAX_LINE, MAX_DOMAIN, MAX_LOCAL_PART, MAX_PATH, VERBS
from smtpedge.errors import ReplySyntaxError, SMTPSyntaxError

if TYPE_CHECKING:
    from smtpedge._pure.smtpline import Command, Path, Reply, parse_command, parse_reply
else:
    Command = _impl.Command
    Path = _impl.Path
    Reply = _impl.Reply
    parse_command = _impl.parse_command
    parse_reply = _impl.parse_reply

__all__ = [
    "DEFAULT_MAX_LINE",
    "MAX_DOMAIN",
    "MAX_LOCAL_PART",
    "MAX_PATH",
    "VERBS",
    "Command",
    "Path",
    "Reply",
    "ReplySyntaxError",
    "SMTPSyntaxError",
    "parse_command",
    "parse_reply",
]
