"""Sans-I/O SMTP protocol state machines, server and client: bytes in, events
or replies and bytes out."""

from smtpedge.protocol.client import ClientConnection, Extensions, RemoteProtocolError, Response
from smtpedge.protocol.events import *  # noqa: F403
from smtpedge.protocol.server import Limits, Offer, ServerConnection, format_reply

__all__ = [
    "ClientConnection",
    "Extensions",
    "Limits",
    "Offer",
    "RemoteProtocolError",
    "Response",
    "ServerConnection",
    "format_reply",
]
