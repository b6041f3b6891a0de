"""The exceptions of smtpedge, defined once here and raised by both backends.

The Rust core builds these same classes (it imports this module), so code that
catches them works whichever backend is in use. Each error keeps the raw facts
(reason, byte offset, reply code) as attributes; the message is rendered here.
"""

from __future__ import annotations

__all__ = [
    "DataError",
    "IncompleteHeader",
    "ProxyProtocolError",
    "ReplySyntaxError",
    "SMTPError",
    "SMTPSyntaxError",
    "SmtpedgeError",
    "TLSError",
    "XtextError",
]


class SmtpedgeError(Exception):
    """Base class of every error smtpedge raises on purpose."""


class ProxyProtocolError(SmtpedgeError, ValueError):
    """A PROXY protocol header is malformed; the connection must be closed."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return (type(self), (self.reason, self.offset))


class IncompleteHeader(SmtpedgeError):
    """The bytes so far are a valid prefix of a PROXY header; read more.

    ``needed`` is a lower bound on how many more bytes the header needs.
    """

    def __init__(self, needed: int) -> None:
        super().__init__(f"incomplete PROXY header: at least {needed} more bytes needed")
        self.needed = needed

    def __reduce__(self) -> tuple[type, tuple[int]]:
        return (type(self), (self.needed,))


class SMTPError(SmtpedgeError):
    """An error answered with an SMTP reply: ``code``, RFC 3463 ``status``, ``text``."""

    def __init__(self, code: int, status: str, text: str, offset: int = 0) -> None:
        super().__init__(f"{code} {status} {text}")
        self.code = code
        self.status = status
        self.text = text
        self.offset = offset

    @property
    def reply(self) -> bytes:
        """The reply line to send, CRLF included."""
        return f"{self.code} {self.status} {self.text}\r\n".encode()

    def __reduce__(self) -> tuple[type, tuple[int, str, str, int]]:
        return (type(self), (self.code, self.status, self.text, self.offset))


class SMTPSyntaxError(SMTPError, ValueError):
    """A command line that is not valid SMTP; ``reply`` is the answer (500/501/553 ...)."""


class DataError(SMTPError):
    """A message refused at the end of DATA (bare LF/CR, too big); ``offset`` is
    the position in the DATA stream where the problem was found."""


class ReplySyntaxError(SmtpedgeError, ValueError):
    """A reply line from a server that is not valid SMTP."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at byte {offset})")
        self.reason = reason
        self.offset = offset

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return (type(self), (self.reason, self.offset))


class XtextError(SmtpedgeError, ValueError):
    """Malformed xtext (RFC 3461) or utf-8-addr-xtext (RFC 6533)."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} (at offset {offset})")
        self.reason = reason
        self.offset = offset

    def __reduce__(self) -> tuple[type, tuple[str, int]]:
        return (type(self), (self.reason, self.offset))


class TLSError(SmtpedgeError):
    """A TLS handshake or record failed; ``reason`` says why in OpenSSL's words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (type(self), (self.reason,))
