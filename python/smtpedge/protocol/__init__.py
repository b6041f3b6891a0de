"""Sans-I/O SMTP protocol state machines: bytes in, events and bytes out."""

from smtpedge.protocol.events import *  # noqa: F403
from smtpedge.protocol.server import Limits, Offer, ServerConnection, format_reply

__all__ = ["Limits", "Offer", "ServerConnection", "format_reply"]
