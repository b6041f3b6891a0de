"""A TLS engine without I/O: pyOpenSSL over memory BIOs.

Encrypted bytes from the network go in with ``receive``; ``handshake``
advances the handshake; ``read`` returns decrypted application data; ``write``
encrypts; ``outgoing`` returns the bytes to send. The same engine serves both
sides (server accept, client connect) and can start mid-session, as STARTTLS
needs. CPython's ssl module on 3.11 can neither staple OCSP nor show the peer's
chain; pyOpenSSL can.

    engine = TLSEngine(context, server_side=True)
    engine.receive(data_from_network)
    if engine.handshake():            # True once complete
        plain = engine.read()
    transport.write(engine.outgoing())
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509
from OpenSSL import SSL

from smtpedge.errors import TLSError

__all__ = ["TLSEngine", "TLSInfo"]


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What was negotiated: protocol version, cipher, the client's SNI (server
    side), the peer certificate and chain (``cryptography`` objects), and
    whether an OCSP response was stapled (server: sent; client: received)."""

    version: str
    cipher: str
    cipher_bits: int
    sni: str | None = None
    peer_certificate: x509.Certificate | None = None
    peer_chain: tuple[x509.Certificate, ...] = field(default=())
    ocsp_stapled: bool = False
    ocsp_requested: bool = False


def _reason(exc: SSL.Error) -> str:
    parts = []
    for err in exc.args[0] if exc.args and isinstance(exc.args[0], list) else []:
        if isinstance(err, tuple) and len(err) >= 3:
            parts.append(str(err[2]))
    return ", ".join(parts) or str(exc) or type(exc).__name__


class TLSEngine:
    """One TLS session over memory buffers."""

    __slots__ = ("_closed", "_conn", "_done", "ocsp_requested", "ocsp_stapled", "server_side")

    def __init__(
        self,
        context: SSL.Context,
        *,
        server_side: bool,
        server_hostname: str | None = None,
        request_ocsp: bool = False,
    ) -> None:
        self.server_side = server_side
        self._conn = SSL.Connection(context, None)
        self._done = False
        self._closed = False
        self.ocsp_stapled = False
        self.ocsp_requested = False
        if server_side:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
            if server_hostname:
                self._conn.set_tlsext_host_name(server_hostname.encode("idna"))
            if request_ocsp:
                self._conn.request_ocsp()
        self._conn.set_app_data(self)

    @property
    def connection(self) -> SSL.Connection:
        return self._conn

    @property
    def established(self) -> bool:
        return self._done

    @property
    def closed(self) -> bool:
        """True once the peer sent close_notify."""
        return self._closed

    def receive(self, data: bytes) -> None:
        """Feed bytes from the network (b"" for end of stream)."""
        if data:
            self._conn.bio_write(data)
        else:
            self._conn.bio_shutdown()

    def handshake(self) -> bool:
        """Advance the handshake; True once it is complete. Raises TLSError."""
        if self._done:
            return True
        try:
            self._conn.do_handshake()
        except SSL.WantReadError:
            return False
        except SSL.Error as exc:
            raise TLSError(_reason(exc)) from None
        self._done = True
        return True

    def read(self) -> bytes:
        """All application data decrypted so far."""
        out = []
        while True:
            try:
                out.append(self._conn.recv(65536))
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._closed = True
                break
            except SSL.Error as exc:
                raise TLSError(_reason(exc)) from None
        return b"".join(out)

    def write(self, data: bytes) -> None:
        """Encrypt application data (collect it with ``outgoing``)."""
        view = memoryview(data)
        while view:
            try:
                n = self._conn.send(view)
            except SSL.Error as exc:
                raise TLSError(_reason(exc)) from None
            view = view[n:]

    def outgoing(self) -> bytes:
        """Encrypted bytes waiting to be sent."""
        out = []
        while True:
            try:
                out.append(self._conn.bio_read(65536))
            except SSL.WantReadError:
                break
        return b"".join(out)

    def close(self) -> None:
        """Send close_notify (collect it with ``outgoing``)."""
        try:
            self._conn.shutdown()
        except SSL.Error:
            pass

    def info(self) -> TLSInfo:
        conn = self._conn
        chain = conn.get_peer_cert_chain(as_cryptography=True) or []
        peer = conn.get_peer_certificate(as_cryptography=True)
        sni = conn.get_servername()
        return TLSInfo(
            version=conn.get_protocol_version_name(),
            cipher=conn.get_cipher_name() or "",
            cipher_bits=conn.get_cipher_bits() or 0,
            sni=sni.decode("ascii", "replace") if sni else None,
            peer_certificate=peer,
            peer_chain=tuple(chain),
            ocsp_stapled=self.ocsp_stapled,
            ocsp_requested=self.ocsp_requested,
        )
