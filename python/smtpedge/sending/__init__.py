"""The sending side: the asyncio SMTP client (``client``), on the sans-I/O
client protocol in ``smtpedge.protocol.client``; usable on its own as a library.

    from smtpedge.sending import OutgoingMessage, SMTPClient, TLSPolicy
"""

from smtpedge.sending.client import (
    OutgoingMessage,
    RecipientResult,
    SendResult,
    SMTPClient,
    SMTPClientError,
    TLSPolicy,
)

__all__ = [
    "OutgoingMessage",
    "RecipientResult",
    "SMTPClient",
    "SMTPClientError",
    "SendResult",
    "TLSPolicy",
]
