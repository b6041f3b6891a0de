"""``Session`` (one connection) and ``Envelope`` (one mail transaction), the
objects handlers receive, shaped like aiosmtpd's so its users feel at home.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from smtpedge.esmtp import MailParams, Recipient

if TYPE_CHECKING:
    from smtpedge._pure.proxy import ProxyHeader
    from smtpedge.tls.engine import TLSInfo

__all__ = ["Envelope", "Recipient", "Session"]  # Recipient: from smtpedge.esmtp

_NO_PARAMS = MailParams()

Address = tuple[str, int]


@dataclass(slots=True)
class Session:
    """One client connection.

    ``peer`` is the real client: the address from the PROXY header when the
    connection came through a proxy, else the TCP peer. Every limit, host list,
    log line and Received header uses it, and it survives STARTTLS.
    """

    id: str
    peer: Address
    sock: Address
    proxy_header: ProxyHeader | None = None
    proxy_peer: Address | None = None
    proxy_destination: Address | None = None
    host_name: str | None = None
    sender_host_name: str | None = None  # the verified reverse name, when a host list needed it
    extended_smtp: bool = False
    tls: TLSInfo | None = None
    messages: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tls_in_ocsp(self) -> str:
        """Exim's $tls_in_ocsp, server side: "notreq" (no TLS, or the client
        did not ask for a proof), "notresp" (asked, none good to staple),
        "stapled"."""
        if self.tls is None or not self.tls.ocsp_requested:
            return "notreq"
        return "stapled" if self.tls.ocsp_stapled else "notresp"

    @property
    def proxy_session(self) -> bool:
        """Exim's $proxy_session: the connection came through a PROXY header."""
        return self.proxy_header is not None

    @property
    def proxy_local_address(self) -> str | None:
        """Exim's $proxy_local_address: the proxy's own address, as seen here."""
        return self.proxy_peer[0] if self.proxy_peer else None

    @property
    def proxy_local_port(self) -> int | None:
        return self.proxy_peer[1] if self.proxy_peer else None

    @property
    def proxy_external_address(self) -> str | None:
        """Exim's $proxy_external_address: the proxy address the client reached."""
        return self.proxy_destination[0] if self.proxy_destination else None

    @property
    def proxy_external_port(self) -> int | None:
        return self.proxy_destination[1] if self.proxy_destination else None


@dataclass(slots=True)
class Envelope:
    """One mail transaction: sender, recipients, parameters, content.

    ``content`` holds the message as received (without the Received header
    smtpedge adds when it queues the message); ``original_content`` is an alias
    kept for aiosmtpd users. A message bigger than ``spool_inline_max`` is
    written to a spool file as it arrives: ``content_file`` names it, and
    ``content`` is read from it only when a ``handle_DATA`` hook is there to
    see it.
    """

    mail_from: str | None = None
    mail_params: MailParams = _NO_PARAMS  # frozen: one instance serves every envelope
    raw_mail_params: tuple[tuple[str, str | None], ...] = ()
    recipients: list[Recipient] = field(default_factory=list)
    content: bytes | None = None
    smtputf8: bool = False
    content_file: str | None = None

    @property
    def rcpt_tos(self) -> list[str]:
        """The recipient addresses, as aiosmtpd's ``envelope.rcpt_tos``."""
        return [r.address for r in self.recipients]

    @property
    def mail_options(self) -> list[str]:
        return [k if v is None else f"{k}={v}" for k, v in self.raw_mail_params]

    @property
    def original_content(self) -> bytes | None:
        return self.content
