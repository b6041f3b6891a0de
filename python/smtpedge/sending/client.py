"""An asyncio SMTP client for one connection to one server, reused for as
many messages as the caller has for it: the adapter between a socket, the TLS
engine and the sans-I/O ``smtpedge.protocol.ClientConnection``.

    async with SMTPClient("mx.example.net", 25, helo_name="mx.test") as client:
        result = await client.send(OutgoingMessage(sender, recipients, content))

What it promises, whatever the server offers:

- EHLO, falling back to HELO when EHLO is refused (RFC 5321 section 3.2);
  PIPELINING when offered (RFC 2920), CHUNKING (BDAT, RFC 3030) when offered.
- SIZE: a message larger than the server's declared limit is refused before
  anything is sent (RFC 1870). 8-bit data never goes to a server without
  8BITMIME, nor a UTF-8 address to one without SMTPUTF8: each is a failure
  with its RFC 3463 status (5.6.3, 5.6.7), never a silent downgrade.
- DSN (RFC 3461): to a server that offers DSN, RET and ENVID on MAIL and
  NOTIFY and ORCPT on each RCPT go exactly as received (byte for byte), and
  ``ORCPT=rfc822;<recipient>`` is added where none was given; to a server
  that does not, none of them is sent (``SendResult.dsn`` says which).
- STARTTLS by ``TLSPolicy``: opportunistic by default, or required; the
  certificate chain verified against a CA file or the system store, and the
  name checked with ``smtpedge.certnames`` (RFC 6125); SNI sent; an OCSP
  staple asked for and verified with ``smtpedge.tls.ocsp``. Or DANE
  (RFC 7672): with TLSA records in the policy, TLS is required, SNI carries
  the TLSA base domain, and the chain must match a record
  (``smtpedge.tls.dane``); CA files and OCSP do not apply then.
- Timeouts for connecting, for each reply, and for the reply to the data.

Failures of the connection itself (it cannot be made, a timeout, TLS that
policy requires and cannot be had, a server that breaks the protocol) raise
``SMTPClientError`` carrying a ``Response``: transient (4xx) when another try
or another host may succeed. A refused sender or recipient is not an error:
it is in the ``SendResult``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from OpenSSL import SSL

from smtpedge import certnames, xtext
from smtpedge.errors import SmtpedgeError, TLSError
from smtpedge.esmtp import Recipient
from smtpedge.protocol.client import ClientConnection, Extensions, RemoteProtocolError, Response
from smtpedge.tls import dane as _dane
from smtpedge.tls import ocsp
from smtpedge.tls.engine import TLSEngine, TLSInfo

__all__ = [
    "OutgoingMessage",
    "RecipientResult",
    "SMTPClient",
    "SMTPClientError",
    "SendResult",
    "TLSPolicy",
]

_DSN_MAIL = ("RET", "ENVID")
_DSN_RCPT = ("NOTIFY", "ORCPT")
# OpenSSL's X509_V_ERR_* numbers for the reasons a chain fails most often.
_VERIFY_ERRORS = {
    2: "unable to get the issuer certificate",
    9: "certificate is not yet valid",
    10: "certificate has expired",
    18: "self-signed certificate",
    19: "self-signed certificate in the chain",
    20: "unable to get the local issuer certificate",
    21: "unable to verify the first certificate",
    26: "unsuitable certificate purpose",
}


class SMTPClientError(SmtpedgeError):
    """The connection failed; ``response`` says how (``response.local`` when
    smtpedge made it up: a timeout, a TLS failure, a refused connection)."""

    def __init__(self, response: Response) -> None:
        super().__init__(str(response))
        self.response = response

    @property
    def transient(self) -> bool:
        return not self.response.permanent


def _local(code: int, status: str, text: str) -> Response:
    return Response(code, status, (text,), local=True)


def _error(code: int, status: str, text: str) -> SMTPClientError:
    return SMTPClientError(_local(code, status, text))


@dataclass(frozen=True, slots=True)
class TLSPolicy:
    """How to use TLS with one server (Exim's per-host options):

    - ``starttls``: "opportunistic" (when offered; Exim's default), "require"
      (``hosts_require_tls``: no TLS, no delivery) or "never".
    - ``verify``: "none", "try" (``tls_try_verify_hosts``: check and log,
      deliver anyway) or "require" (``tls_verify_hosts``: a failure defers).
    - ``ca_file``: the trust anchors (``tls_verify_certificates``); None for
      the system's store.
    - ``check_hostname`` (``tls_verify_cert_hostnames``): the certificate
      must name the host we looked up.
    - ``request_ocsp`` (``hosts_request_ocsp``), ``require_ocsp``
      (``hosts_require_ocsp``: no verified staple, no delivery).
    - ``dane``: usable TLSA records (RFC 7672): the chain must match one of
      them; ``dane_names`` are the reference identifiers for DANE-TA, the
      first being the TLSA base domain (also sent as SNI). ``starttls``
      must then be "require"; ``verify``, ``ca_file``, ``check_hostname``
      and the OCSP options do not apply.
    """

    starttls: str = "opportunistic"
    verify: str = "none"
    ca_file: str | None = None
    check_hostname: bool = True
    request_ocsp: bool = True
    require_ocsp: bool = False
    dane: tuple[_dane.TLSARecord, ...] = ()
    dane_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.starttls not in ("opportunistic", "require", "never"):
            raise ValueError(f"starttls must be opportunistic, require or never: {self.starttls!r}")
        if self.verify not in ("none", "try", "require"):
            raise ValueError(f"verify must be none, try or require: {self.verify!r}")
        if self.require_ocsp and self.starttls == "never":
            raise ValueError("require_ocsp needs TLS")
        if self.dane and (self.starttls != "require" or not self.dane_names):
            raise ValueError("DANE needs starttls='require' and the reference names")


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message to send: the envelope as received, ``mail_params`` and each
    recipient's ``raw_params`` byte-exact (ENVID, RET, NOTIFY, ORCPT are
    passed on from them), the content with its headers."""

    sender: str
    recipients: Sequence[Recipient]
    content: bytes
    mail_params: Sequence[tuple[str, str | None]] = ()
    smtputf8: bool = False


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """One recipient's outcome: its RCPT reply if that refused it, else the
    reply to the message data (or to MAIL, if that was refused)."""

    recipient: Recipient
    response: Response
    accepted: bool  # the server took the message for this recipient

    @property
    def transient(self) -> bool:
        return not self.accepted and not self.response.permanent


@dataclass(frozen=True, slots=True)
class SendResult:
    results: tuple[RecipientResult, ...]
    response: Response | None  # the reply to the data, or to a refused MAIL
    dsn: bool  # the server offers DSN: the parameters went with the message
    stage: str = "DATA"  # what ``response`` answered: "MAIL" or "DATA"

    @property
    def accepted(self) -> list[Recipient]:
        return [r.recipient for r in self.results if r.accepted]


@dataclass(slots=True)
class _TLSState:
    info: TLSInfo | None = None
    verified: bool | None = None  # None: not checked
    failure: str | None = None
    ocsp: str = "notreq"  # Exim's $tls_out_ocsp
    staple: bytes | None = None
    chain_errors: list[str] = field(default_factory=list)
    dane: _dane.Match | None = None


class SMTPClient:
    """One SMTP connection (see the module docstring). ``server_name`` is the
    name looked up for the host (for SNI and the certificate check); it
    defaults to ``host``."""

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        helo_name: str = "localhost",
        server_name: str | None = None,
        source_address: str | None = None,
        tls: TLSPolicy | None = None,
        connect_timeout: float = 30.0,
        command_timeout: float = 300.0,
        data_timeout: float = 600.0,
        chunk_size: int = 1 << 20,
    ) -> None:
        self.host, self.port = host, port
        self.helo_name = helo_name
        self.server_name = server_name or host
        self.source_address = source_address
        self.policy = tls or TLSPolicy()
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self.data_timeout = data_timeout
        self.chunk_size = chunk_size
        self.extensions = Extensions({})
        self.esmtp = False
        self.banner: Response | None = None
        self._tls = _TLSState()
        self._engine: TLSEngine | None = None
        self._proto = ClientConnection()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    # -- what was negotiated ----------------------------------------------------------

    @property
    def tls(self) -> TLSInfo | None:
        return self._tls.info

    @property
    def tls_verified(self) -> bool | None:
        """True when chain and name were verified, False when a check
        failed (``tls_failure`` says why), None when nothing was checked."""
        return self._tls.verified

    @property
    def tls_failure(self) -> str | None:
        return self._tls.failure

    @property
    def dane(self) -> _dane.Match | None:
        """The TLSA record the server's chain matched (DANE was used)."""
        return self._tls.dane

    @property
    def ocsp(self) -> str:
        """Exim's ``$tls_out_ocsp``: notreq, notresp, vfynotdone, failed or verified."""
        return self._tls.ocsp

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    # -- connection -----------------------------------------------------------------

    async def __aenter__(self) -> SMTPClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.quit()

    async def connect(self) -> Response:
        """Connect, read the banner, say EHLO (or HELO), and start TLS as the
        policy says. Returns the banner."""
        local = (self.source_address, 0) if self.source_address else None
        try:
            self._reader, self._writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, local_addr=local),
                self.connect_timeout,
            )
        except TimeoutError:
            where, after = self._where(), self.connect_timeout
            raise _error(
                451, "4.4.1", f"connection to {where} timed out after {after:g}s"
            ) from None
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise SMTPClientError(
                _local(451, "4.4.1", f"cannot connect to {self._where()}: {reason}")
            ) from None
        banner = await self._response("the banner")
        self.banner = banner
        if banner.code != 220:
            await self.close()
            raise SMTPClientError(banner)
        await self._hello()
        if self.policy.starttls != "never":
            await self._starttls()
        return banner

    def _where(self) -> str:
        """``mx.example.net [192.0.2.1]:25`` (the name only when it differs)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.server_name != self.host:
            return f"{self.server_name} [{self.host}]:{self.port}"
        return f"{host}:{self.port}"

    async def _hello(self) -> None:
        resp = await self.command(f"EHLO {self.helo_name}")
        if resp.code == 250:
            self.esmtp = True
            self.extensions = Extensions.from_ehlo(resp)
            return
        if resp.code not in (500, 502, 504, 550) and not resp.permanent:
            await self.close()
            raise SMTPClientError(resp)
        resp = await self.command(f"HELO {self.helo_name}")
        if resp.code != 250:
            await self.close()
            raise SMTPClientError(resp)
        self.esmtp = False
        self.extensions = Extensions({})

    async def _starttls(self) -> None:
        policy = self.policy
        if "STARTTLS" not in self.extensions:
            if policy.starttls == "require":
                await self.quit()
                raise _error(
                    451, "4.7.10", f"{self._where()} does not offer STARTTLS, and TLS is required"
                )
            return
        resp = await self.command("STARTTLS")
        if resp.code != 220:
            if policy.starttls == "require":
                await self.quit()
                raise _error(451, "4.7.10", f"STARTTLS refused ({resp}), and TLS is required")
            return
        name = policy.dane_names[0] if policy.dane else self.server_name
        sni = None if _is_address(name) else name
        request_ocsp = policy.request_ocsp and not policy.dane
        engine = TLSEngine(self._context(), server_side=False, server_hostname=sni,
                           request_ocsp=request_ocsp)  # fmt: skip
        try:
            await self._handshake(engine)
        except (TLSError, ConnectionError) as exc:
            await self.close()
            raise _error(
                451, "4.7.5", f"TLS negotiation with {self._where()} failed: {exc}"
            ) from None
        self._engine = engine
        state = self._tls
        state.info = engine.info()
        if policy.dane:
            await self._check_dane(state.info)
            self._proto = ClientConnection()
            await self._hello()
            return
        problem = self._check_certificate(state.info)
        if policy.verify != "none":
            state.verified = problem is None
            state.failure = problem
            if problem is not None and policy.verify == "require":
                await self.quit()
                raise _error(
                    451, "4.7.5", f"certificate of {self._where()} not verified: {problem}"
                )
        self._check_staple(state.info)
        if policy.require_ocsp and state.ocsp != "verified":
            await self.quit()
            raise _error(
                451,
                "4.7.5",
                f"no valid OCSP staple from {self._where()} ({state.ocsp}), and one is required",
            )
        # RFC 3207 section 4.2: forget what the server said before TLS.
        self._proto = ClientConnection()
        await self._hello()

    async def _check_dane(self, info: TLSInfo) -> None:
        """RFC 7672: the chain must match a TLSA record, or no delivery."""
        state, policy = self._tls, self.policy
        chain = list(info.peer_chain) or (
            [info.peer_certificate] if info.peer_certificate is not None else []
        )
        try:
            state.dane = _dane.verify_chain(chain, policy.dane, policy.dane_names)
        except _dane.DaneFailure as exc:
            state.verified, state.failure = False, f"DANE: {exc.reason}"
            await self.quit()
            raise _error(451, "4.7.5", f"DANE verification of {self._where()} failed: "
                         f"{exc.reason}") from None  # fmt: skip
        state.verified = True

    def _context(self) -> SSL.Context:
        ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        if self.policy.verify != "none" and not self.policy.dane:
            if self.policy.ca_file:
                ctx.load_verify_locations(self.policy.ca_file)
            else:
                ctx.set_default_verify_paths()
        errors = self._tls.chain_errors

        def on_verify(conn: SSL.Connection, cert: object, errno: int, depth: int, ok: int) -> bool:
            if not ok:
                errors.append(f"{_VERIFY_ERRORS.get(errno, f'error {errno}')} (depth {depth})")
            return True  # decide after the handshake, by policy

        ctx.set_verify(SSL.VERIFY_PEER, on_verify)
        if self.policy.request_ocsp and not self.policy.dane:

            def on_ocsp(conn: SSL.Connection, data: bytes, _: object) -> bool:
                self._tls.staple = data or None
                return True

            ctx.set_ocsp_client_callback(on_ocsp)
        return ctx

    async def _handshake(self, engine: TLSEngine) -> None:
        assert self._reader is not None and self._writer is not None
        while True:
            done = engine.handshake()
            out = engine.outgoing()
            if out:
                self._writer.write(out)
                await asyncio.wait_for(self._writer.drain(), self.command_timeout)
            if done:
                return
            chunk = await asyncio.wait_for(self._reader.read(65536), self.command_timeout)
            if not chunk:
                raise ConnectionError("the server closed the connection during the handshake")
            engine.receive(chunk)

    def _check_certificate(self, info: TLSInfo) -> str | None:
        """Why the certificate is not good for this host, or None."""
        if self._tls.chain_errors:
            return self._tls.chain_errors[0]
        cert = info.peer_certificate
        if cert is None:
            return "no certificate"
        if not self.policy.check_hostname:
            return None
        dns, cns, ips = _dane.certificate_names(cert)
        if certnames.verify_names(dns, cns, ips, self.server_name):
            return None
        shown = ", ".join(dns or cns or ips) or "none"
        return f"the certificate is for {shown}, not {self.server_name}"

    def _check_staple(self, info: TLSInfo) -> None:
        state = self._tls
        if not self.policy.request_ocsp:
            state.ocsp = "notreq"
            return
        if state.staple is None:
            state.ocsp = "notresp"
            return
        cert, chain = info.peer_certificate, info.peer_chain
        issuer = next((c for c in chain[1:] if cert is not None and c.subject == cert.issuer), None)
        if cert is None or issuer is None:
            state.ocsp = "vfynotdone"
            return
        state.ocsp = "verified" if ocsp.verify(state.staple, cert, issuer).ok else "failed"

    async def quit(self) -> None:
        """Say QUIT (if the connection still stands) and close."""
        if self.connected:
            with contextlib.suppress(SMTPClientError, OSError):
                await asyncio.wait_for(self.command("QUIT"), min(self.command_timeout, 10))
        await self.close()

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 5)

    # -- I/O --------------------------------------------------------------------------

    async def _flush(self, timeout: float) -> None:
        out = self._proto.data_to_send()
        if not out:
            return
        if self._writer is None or self._writer.is_closing():
            raise _error(451, "4.4.2", f"connection to {self._where()} lost")
        if self._engine is not None:
            self._engine.write(out)
            out = self._engine.outgoing()
        self._writer.write(out)
        try:
            await asyncio.wait_for(self._writer.drain(), timeout)
        except TimeoutError:
            await self.close()
            raise _error(
                451, "4.4.2", f"timeout sending to {self._where()} after {timeout:g}s"
            ) from None
        except OSError as exc:
            await self.close()
            raise _error(
                451, "4.4.2", f"connection to {self._where()} lost: {exc.strerror or exc}"
            ) from None

    async def _response(self, waiting_for: str, timeout: float | None = None) -> Response:
        timeout = self.command_timeout if timeout is None else timeout
        proto = self._proto
        while True:
            try:
                resp = proto.next_response()
            except RemoteProtocolError as exc:
                await self.close()
                raise _error(451, "4.5.0", f"{self._where()}: {exc}") from None
            if resp is not None:
                return resp
            if proto.closed or self._reader is None:
                await self.close()
                raise _error(
                    421,
                    "4.4.2",
                    f"{self._where()} closed the connection while we waited for {waiting_for}",
                )
            try:
                chunk = await asyncio.wait_for(self._reader.read(65536), timeout)
            except TimeoutError:
                await self.close()
                raise _error(
                    451,
                    "4.4.2",
                    f"timeout after {timeout:g}s waiting for {waiting_for} from {self._where()}",
                ) from None
            except OSError:
                chunk = b""  # a reset: seen as the end of the connection
            if self._engine is not None and chunk:
                try:
                    self._engine.receive(chunk)
                    chunk = self._engine.read()
                except TLSError as exc:
                    await self.close()
                    raise _error(451, "4.7.5", f"TLS error with {self._where()}: {exc}") from None
                if not chunk and not self._engine.closed:
                    continue
            proto.receive_data(chunk)

    async def command(self, line: str) -> Response:
        """Send one command and return its reply."""
        self._proto.send_command(line)
        await self._flush(self.command_timeout)
        return await self._response(line.split(" ", 1)[0].upper())

    # -- transactions -----------------------------------------------------------------

    async def send(self, message: OutgoingMessage) -> SendResult:
        """Send one message on this connection; what each recipient got."""
        ext = self.extensions
        dsn = "DSN" in ext
        refusal = self._refusal(message)
        if refusal is not None:
            return SendResult(tuple(RecipientResult(r, refusal, False)
                                    for r in message.recipients), refusal, dsn, "MAIL")  # fmt: skip
        body8 = _is_8bit(message)
        utf8 = _needs_smtputf8(message)
        mail = f"MAIL FROM:<{message.sender}>"
        if "SIZE" in ext:
            mail += f" SIZE={len(message.content)}"
        if body8:
            mail += " BODY=8BITMIME"
        if utf8:
            mail += " SMTPUTF8"
        if dsn:
            mail += _params(message.mail_params, _DSN_MAIL)
        rcpts = [self._rcpt_line(r, dsn) for r in message.recipients]
        chunking = "CHUNKING" in ext
        pipelining = "PIPELINING" in ext
        proto = self._proto
        if pipelining:
            proto.send_command(mail)
            for line in rcpts:
                proto.send_command(line)
            if not chunking:
                proto.send_command("DATA")
            await self._flush(self.command_timeout)
            mail_resp = await self._response("the reply to MAIL")
            rcpt_resps = [await self._response("the reply to RCPT") for _ in rcpts]
            data_resp = None if chunking else await self._response("the reply to DATA")
        else:
            mail_resp = await self.command(mail)
            if mail_resp.code != 250:
                return await self._failed_all(message, mail_resp, dsn)
            rcpt_resps = [await self.command(line) for line in rcpts]
            data_resp = None
        if mail_resp.code != 250:
            if data_resp is not None and data_resp.code == 354:
                await self._abort_data()
            return await self._failed_all(message, mail_resp, dsn)
        accepted = [i for i, resp in enumerate(rcpt_resps) if resp.code in (250, 251)]
        if not accepted:
            if data_resp is not None and data_resp.code == 354:
                await self._abort_data()  # RFC 2920 section 3.1: end it with the dot alone
            await self._reset()
            refused = zip(message.recipients, rcpt_resps, strict=True)
            return SendResult(tuple(RecipientResult(r, resp, False) for r, resp in refused),
                              None, dsn)  # fmt: skip
        if chunking:
            final = await self._send_chunks(message.content)
        else:
            if data_resp is None:
                data_resp = await self.command("DATA")
            if data_resp.code != 354:
                final = data_resp
            else:
                proto.send_message(message.content)
                await self._flush(self.data_timeout)
                final = await self._response("the reply to the message data", self.data_timeout)
        if final.code != 250:
            await self._reset()
        outcomes = [
            RecipientResult(r, final, final.code == 250) if i in accepted
            else RecipientResult(r, resp, False)
            for i, (r, resp) in enumerate(zip(message.recipients, rcpt_resps, strict=True))
        ]  # fmt: skip
        return SendResult(tuple(outcomes), final, dsn)

    def _refusal(self, message: OutgoingMessage) -> Response | None:
        """Why this server must not get this message at all, or None."""
        ext = self.extensions
        limit = ext.size_limit
        if limit is not None and len(message.content) > limit:
            return _local(552, "5.3.4", f"message of {len(message.content)} bytes is larger "
                          f"than {self._where()} takes (SIZE {limit})")  # fmt: skip
        if _is_8bit(message) and "8BITMIME" not in ext:
            return _local(554, "5.6.3", f"the message holds 8-bit data and {self._where()} "
                          "does not offer 8BITMIME")  # fmt: skip
        if _needs_smtputf8(message) and "SMTPUTF8" not in ext:
            return _local(553, "5.6.7", f"the message needs SMTPUTF8 (UTF-8 addresses or "
                          f"headers), which {self._where()} does not offer")  # fmt: skip
        return None

    def _rcpt_line(self, r: Recipient, dsn: bool) -> str:
        line = f"RCPT TO:<{r.address}>"
        if not dsn:
            return line
        line += _params(r.raw_params, _DSN_RCPT)
        if not any(k.upper() == "ORCPT" for k, _ in r.raw_params):
            # RFC 3461 section 4.2: give the original recipient when we know it.
            if r.address.isascii():
                line += " ORCPT=rfc822;" + xtext.encode(r.address.encode())
            else:
                line += " ORCPT=utf-8;" + xtext.encode_utf8_addr(r.address)
        return line

    async def _send_chunks(self, content: bytes) -> Response:
        size = self.chunk_size
        pieces = [content[i : i + size] for i in range(0, len(content), size)] or [b""]
        for n, piece in enumerate(pieces):
            last = n == len(pieces) - 1
            self._proto.send_chunk(piece, last=last)
            await self._flush(self.data_timeout)
            resp = await self._response("the reply to BDAT", self.data_timeout)
            if resp.code != 250 or last:
                return resp
        raise AssertionError("unreachable")  # pragma: no cover

    async def _abort_data(self) -> None:
        self._proto.send_command(".")
        await self._flush(self.command_timeout)
        with contextlib.suppress(SMTPClientError):
            await self._response("the reply to an empty message")

    async def _reset(self) -> None:
        with contextlib.suppress(SMTPClientError):
            await self.command("RSET")

    async def _failed_all(self, message: OutgoingMessage, resp: Response, dsn: bool) -> SendResult:
        await self._reset()
        return SendResult(tuple(RecipientResult(r, resp, False) for r in message.recipients),
                          resp, dsn, "MAIL")  # fmt: skip


def _params(raw: Sequence[tuple[str, str | None]], wanted: tuple[str, ...]) -> str:
    return "".join(f" {k}" + ("" if v is None else f"={v}") for k, v in raw if k.upper() in wanted)


def _is_8bit(message: OutgoingMessage) -> bool:
    if any(k.upper() == "BODY" and (v or "").upper() == "8BITMIME" for k, v in message.mail_params):
        return True
    return not message.content.isascii()


def _needs_smtputf8(message: OutgoingMessage) -> bool:
    if message.smtputf8:
        return True
    return not message.sender.isascii() or any(not r.address.isascii() for r in message.recipients)


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True
