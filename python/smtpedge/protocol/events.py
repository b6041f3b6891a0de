"""Events the server protocol reports to its I/O adapter.

Some events are decisions: the protocol waits (reading no further input) until
the adapter answers them with ``ServerConnection.respond``. They are marked
``needs_reply``; every other event is information, already answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from smtpedge.errors import SMTPError
from smtpedge.esmtp import MailParams, RcptParams

if TYPE_CHECKING:
    from smtpedge._pure.proxy import ProxyHeader
    from smtpedge._pure.smtpline import Path

__all__ = [
    "Closed",
    "EarlyTalker",
    "Event",
    "Hello",
    "MailFrom",
    "MessageReceived",
    "MessageRefused",
    "ProtocolViolation",
    "ProxyReceived",
    "ProxyRejected",
    "Quit",
    "RcptTo",
    "Reset",
    "StartTLS",
    "Verify",
]


class Event:
    """Base class of protocol events."""

    __slots__ = ()
    needs_reply: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class ProxyReceived(Event):
    """A valid PROXY header; the adapter checks the real client and then calls
    ``greet`` (or ``refuse``)."""

    header: ProxyHeader


@dataclass(frozen=True, slots=True)
class ProxyRejected(Event):
    """The connection did not start with a valid PROXY header, or a host not
    in hosts_proxy sent one (``unexpected``); it must be closed."""

    reason: str
    offset: int
    unexpected: bool = False


@dataclass(frozen=True, slots=True)
class EarlyTalker(Event):
    """The client sent data before the banner; it has been refused."""

    preview: bytes


@dataclass(frozen=True, slots=True)
class Hello(Event):
    """HELO or EHLO. ``responses`` are the reply lines the protocol will send
    if the adapter accepts (aiosmtpd's ``handle_EHLO`` may edit them)."""

    needs_reply: ClassVar[bool] = True
    name: str
    extended: bool
    responses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class MailFrom(Event):
    needs_reply: ClassVar[bool] = True
    path: Path
    params: MailParams
    raw_params: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class RcptTo(Event):
    needs_reply: ClassVar[bool] = True
    path: Path
    params: RcptParams
    raw_params: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A whole message (DATA after the final dot, or BDAT LAST). The adapter
    must make it durable before answering 250."""

    needs_reply: ClassVar[bool] = True
    content: bytes
    command: str  # "DATA" or "BDAT"


@dataclass(frozen=True, slots=True)
class MessageRefused(Event):
    """Message data that had to be refused (bare LF/CR, too big); answered."""

    error: SMTPError
    command: str


@dataclass(frozen=True, slots=True)
class Verify(Event):
    needs_reply: ClassVar[bool] = True
    argument: str


@dataclass(frozen=True, slots=True)
class StartTLS(Event):
    """STARTTLS was asked for and offered. Accept with a 220 reply, then call
    ``tls_started`` once the handshake is done."""

    needs_reply: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Reset(Event):
    """RSET, or a new HELO/EHLO: the transaction was dropped."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation(Event):
    """A command was refused (syntax, sequence, limits); already answered."""

    error: SMTPError
    line: bytes


@dataclass(frozen=True, slots=True)
class Quit(Event):
    """QUIT was answered; the connection closes once output is flushed."""


@dataclass(frozen=True, slots=True)
class Closed(Event):
    """The protocol ended the session (too many errors, sync error, timeout,
    shutdown); close once output is flushed."""

    reason: str
