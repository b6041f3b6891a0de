"""The Received header a server adds to each message it queues (RFC 5321
4.4), naming the real client (the proxied one) and the queue ID.

    Received: from client.example ([192.0.2.7]:51234)
            by mx.example.net (smtpedge 0.1.0) with ESMTP id 01JD3...
            for <rcpt@example.net>; Sat, 28 Nov 2026 21:30:00 +0000

The protocol keyword follows RFC 3848 and RFC 6531: SMTP, ESMTP, ESMTPS,
UTF8SMTP, UTF8SMTPS.
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime

from smtpedge.receiving.session import Envelope, Session

__all__ = ["protocol_name", "received_header"]


def protocol_name(session: Session, envelope: Envelope) -> str:
    if not session.extended_smtp:
        return "SMTP"
    name = "UTF8SMTP" if envelope.mail_params.smtputf8 else "ESMTP"
    return name + ("S" if session.tls is not None else "")


def _clean(text: str) -> str:
    """An EHLO name as a comment-safe token (no CR/LF, parentheses or backslashes)."""
    if text.isprintable() and "(" not in text and ")" not in text and "\\" not in text:
        return text[:255]  # the usual name: nothing to replace
    return "".join(c if c.isprintable() and c not in "()\\" else "?" for c in text)[:255]


_last_date: tuple[int, str] = (-1, "")


def _date() -> str:
    """The RFC 5322 date of now, made once a second."""
    global _last_date
    now = int(time.time())
    second, text = _last_date
    if now != second:
        text = email.utils.format_datetime(datetime.fromtimestamp(now, UTC))
        _last_date = (now, text)
    return text


def received_header(
    session: Session, envelope: Envelope, hostname: str, queue_id: str, version: str
) -> bytes:
    ip, port = session.peer
    literal = f"IPv6:{ip}" if ":" in ip else ip
    helo = _clean(session.host_name or "unknown")
    via = ""
    if session.proxy_peer is not None:
        via = f" via proxy [{session.proxy_peer[0]}]"
    lines = [
        f"Received: from {helo} ([{literal}]:{port}{via})",
        f"\tby {hostname} (smtpedge {version}) with {protocol_name(session, envelope)}",
        f"\tid {queue_id}",
    ]
    tls = session.tls
    if tls is not None:
        lines.insert(2, f"\t(using {tls.version} with cipher {tls.cipher} "
                        f"({tls.cipher_bits} bits))")  # fmt: skip
    if len(envelope.recipients) == 1:
        lines[-1] += f"\r\n\tfor <{envelope.recipients[0].address}>"
    lines[-1] += f"; {_date()}\r\n"
    return "\r\n".join(lines).encode("utf-8")
