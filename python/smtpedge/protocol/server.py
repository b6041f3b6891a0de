"""The SMTP server protocol, sans I/O (RFC 5321, with RFC 2920 pipelining,
RFC 3030 CHUNKING, RFC 3461 DSN, RFC 6531 SMTPUTF8 and the PROXY protocol).

The adapter feeds bytes with ``receive_data``, takes events from
``next_event`` until it returns None, answers decision events with
``respond``, and sends ``data_to_send()``. Nothing here touches a socket, a
clock or a handler, so every rule can be tested on plain bytes.

States:

    PROXY     waiting for the PROXY header (only when the peer is a proxy)
    GREETING  waiting for the adapter to ``greet`` (limits, banner delay)
    COMMAND   reading command lines
    DATA      reading message data up to CRLF.CRLF
    BDAT      reading a chunk of exactly the announced size
    CLOSED    nothing more is read; close once output is flushed
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smtpedge import proxy, smtpline
from smtpedge.data import DataScanner
from smtpedge.errors import IncompleteHeader, ProxyProtocolError, SMTPError, SMTPSyntaxError
from smtpedge.esmtp import Offered, parse_mail_params, parse_rcpt_params
from smtpedge.protocol import events as ev

__all__ = ["Limits", "Offer", "ServerConnection"]

PROXY, GREETING, COMMAND, DATA, BDAT, CLOSED = (
    "PROXY", "GREETING", "COMMAND", "DATA", "BDAT", "CLOSED"
)  # fmt: skip

# RFC 2920 3.1: these commands must be the last in a pipelined group.
_GROUP_ENDERS = frozenset(("EHLO", "HELO", "DATA", "VRFY", "EXPN", "STARTTLS", "AUTH", "NOOP"))
# A bare CR or LF in BDAT content (BDAT has no terminator to smuggle, but the
# message may be relayed later with DATA).
_BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_BARE_ERROR = SMTPError(
    550, "5.5.2", "Message contains a bare CR or LF (line endings must be CRLF)"
)
_HELP = "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY HELP QUIT"
# next_event stops reading commands once this many replies wait in the output,
# so a client that pipelines without reading meets backpressure, not a buffer
# that grows with its input.
_OUT_BATCH = 256
# Commands that move mail along; every other one counts toward max_nonmail,
# but for one RSET, one HELO or EHLO and one STARTTLS at the start of the
# session and after each message (as Exim counts smtp_accept_max_nonmail).
_MAIL_VERBS = frozenset(("MAIL", "RCPT", "DATA", "BDAT", "QUIT"))
_NONMAIL_FREE = {"RSET": "RSET", "HELO": "HELO", "EHLO": "HELO", "STARTTLS": "STARTTLS"}
_NONMAIL_FREE_KEYS = frozenset(_NONMAIL_FREE.values())
_PROXY_V1 = b"PROXY "


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits that do not depend on who the client is."""

    hostname: str = "localhost"
    max_line: int = 2048
    max_errors: int = 3
    max_unknown: int = 3
    max_recipients: int = 1000
    max_refused_recipients: int = 100
    max_messages: int = 1000  # MAIL commands per session (0: no limit)
    bare_newline: str = "reject"
    enforce_sync: bool = True
    proxy_max_length: int = proxy.DEFAULT_MAX_LENGTH


@dataclass(frozen=True, slots=True)
class Offer:
    """What this client is offered (decided by the adapter from host lists)."""

    size_limit: int = 50 * 1024 * 1024
    pipelining: bool = True
    eightbitmime: bool = True
    smtputf8: bool = True
    chunking: bool = True
    dsn: bool = False
    starttls: bool = False
    require_tls: bool = False
    vrfy: bool = False
    max_nonmail: int = 10  # commands other than MAIL, RCPT, DATA, BDAT, QUIT (0: no limit)

    @property
    def params(self) -> Offered:
        return Offered(self.size_limit, self.eightbitmime, self.smtputf8, self.dsn)


def _reply(code: int, status: str, text: str) -> str:
    return f"{code} {status} {text}"


def _lines(reply: str | Sequence[str]) -> list[str]:
    if isinstance(reply, str):
        return [part for part in reply.replace("\r\n", "\n").split("\n") if part]
    return [str(r) for r in reply]


def format_reply(reply: str | Sequence[str]) -> bytes:
    """Render one reply (a line, or a list of lines) with the right
    continuation markers and CRLFs."""
    if isinstance(reply, str) and reply[3:4] == " " and "\n" not in reply and reply[:3].isdigit():
        return (reply + "\r\n").encode("utf-8")
    lines = _lines(reply)
    if not lines:
        raise ValueError("empty reply")
    out = []
    for i, line in enumerate(lines):
        code, rest = line[:3], line[4:]
        if len(line) < 3 or not code.isdigit() or line[3:4] not in ("", " ", "-"):
            raise ValueError(f"not an SMTP reply line: {line!r}")
        sep = " " if i == len(lines) - 1 else "-"
        out.append(f"{code}{sep}{rest}".rstrip() + "\r\n")
    return "".join(out).encode("utf-8")


_NO_OFFER = Offer()


class ServerConnection:
    """One SMTP session, server side."""

    __slots__ = (
        "_after_close",
        "_bdat_error",
        "_bdat_failed",
        "_bdat_last",
        "_bdat_left",
        "_bdat_parts",
        "_bdat_size",
        "_bdat_tail",
        "_buf",
        "_data_parts",
        "_errors",
        "_excess",
        "_free_nonmail",
        "_mail_commands",
        "_nonmail",
        "_out",
        "_pending",
        "_refused_rcpts",
        "_scanner",
        "_skip_line",
        "_started",
        "_unknown",
        "_utf8_txn",
        "_via_bdat",
        "esmtp",
        "helo",
        "in_transaction",
        "limits",
        "offer",
        "progress",
        "recipients",
        "state",
        "tls_active",
    )

    def __init__(self, limits: Limits | None = None, *, expect_proxy: bool = False) -> None:
        self.limits = limits or Limits()
        self.offer = _NO_OFFER  # until greet(); frozen, so shared
        self.state = PROXY if expect_proxy else GREETING
        self.helo: str | None = None
        self.esmtp = False
        self.in_transaction = False
        self.recipients = 0
        self.tls_active = False
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._pending: ev.Event | None = None
        self._errors = 0
        self._excess = 0
        self._refused_rcpts = 0
        self._nonmail = 0
        self._free_nonmail = set(_NONMAIL_FREE_KEYS)
        self._mail_commands = 0
        self._after_close: ev.Event | None = None
        self.progress = 0
        self._unknown = 0
        self._skip_line = False
        self._started = False
        self._scanner: DataScanner | None = None
        self._data_parts: list[bytes] = []
        self._bdat_left = 0
        self._bdat_size = 0
        self._bdat_parts: list[bytes] = []
        self._bdat_tail = b""
        self._bdat_failed: SMTPError | None = None
        self._bdat_error: SMTPError | None = None
        self._bdat_last = False
        self._via_bdat = False
        self._utf8_txn = False

    # -- adapter interface ----------------------------------------------------

    @property
    def closed(self) -> bool:
        return self.state == CLOSED

    @property
    def waiting(self) -> bool:
        """True while a decision event awaits ``respond``."""
        return self._pending is not None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def output_pending(self) -> bool:
        """True when replies wait in ``data_to_send``. ``next_event`` returns
        None while a batch of them is waiting, even with complete commands
        buffered: send them, then call it again."""
        return bool(self._out)

    def receive_data(self, data: bytes) -> None:
        if self.state != CLOSED:
            self._buf += data

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def greet(self, banner: str, offer: Offer) -> None:
        """Send the 220 banner and start reading commands."""
        if self.state != GREETING:
            raise RuntimeError(f"greet() in state {self.state}")
        self.offer = offer
        self._send(f"220 {banner}")
        self.state = COMMAND

    def refuse(self, reply: str) -> None:
        """Refuse the connection instead of greeting (e.g. ``421`` limits)."""
        self._send(reply)
        self._close()

    def close(self) -> None:
        """End the session without a reply (e.g. a proxy refused by a hook)."""
        self._close()

    def timeout(self) -> None:
        self._send(_reply(421, "4.4.2", f"{self.limits.hostname} Timeout, closing connection"))
        self._close()

    def shutdown(self) -> None:
        self._send(_reply(421, "4.3.2", f"{self.limits.hostname} Service shutting down"))
        self._close()

    def tls_started(self) -> None:
        """After a STARTTLS handshake: forget everything said in the clear
        (RFC 3207 4.2), keep reading commands."""
        self.helo = None
        self.esmtp = False
        self.tls_active = True
        self._reset_transaction()
        self._free_nonmail.add("HELO")  # the EHLO that TLS requires is free

    @property
    def data_pending(self) -> int:
        """Message bytes received and held here (DATA or BDAT) so far."""
        parts = self._data_parts if self.state == DATA else self._bdat_parts
        return sum(map(len, parts))

    def take_data(self) -> bytes:
        """Hand over the message bytes held so far, so that a big message can
        be written out as it arrives; ``MessageReceived.content`` then holds
        only the rest."""
        if self.state == DATA:
            parts, self._data_parts = self._data_parts, []
        else:
            parts, self._bdat_parts = self._bdat_parts, []
        return b"".join(parts)

    def respond(self, reply: str | Sequence[str]) -> bool:
        """Answer the pending decision event; return True if it was accepted
        (a 2xx reply, 3xx for STARTTLS's 220 too)."""
        pending = self._pending
        if pending is None:
            raise RuntimeError("respond() without a pending event")
        data = format_reply(reply)
        self._pending = None
        self._out.append(data)
        ok = data[:1] == b"2"
        if isinstance(pending, ev.Hello):
            if ok:
                self._reset_transaction()
                self.helo = pending.name
                self.esmtp = pending.extended
        elif isinstance(pending, ev.MailFrom):
            if ok:
                self.in_transaction = True
                self._utf8_txn = pending.params.smtputf8
        elif isinstance(pending, ev.RcptTo):
            if ok:
                self.recipients += 1
            elif data[:1] == b"5":
                # A client that keeps giving refused recipients (a relay
                # prober, a dictionary attack) is stopped, as Postfix's
                # smtpd_hard_error_limit does.
                self._refused_rcpts += 1
                if self._refused_rcpts > self.limits.max_refused_recipients:
                    self._after_close = self._drop(
                        "Too many refused recipients",
                        f"more than {self.limits.max_refused_recipients} refused recipients",
                    )
        elif isinstance(pending, ev.MessageReceived):
            self._reset_transaction()
            self._message_over()
        elif isinstance(pending, ev.StartTLS) and ok:
            if self._buf:
                # Plaintext pipelined after STARTTLS must never be read as if
                # it came over TLS (CVE-2011-0411 and its kin).
                self._buf.clear()
        return ok

    def next_event(self) -> ev.Event | None:
        """The next event, or None when more input (or a ``respond``) is
        needed, or when a batch of replies waits to be sent (``output_pending``).

        ``progress`` counts complete lines read (commands and message data),
        so the adapter can time out a line that never completes however many
        bytes of it trickle in."""
        if self._after_close is not None:
            closed, self._after_close = self._after_close, None
            return closed
        while self._pending is None:
            state = self.state
            if state == COMMAND:
                if self._skip_line and not self._skip_long_line():
                    return None
                if not self._started and self._buf:
                    if self._maybe_proxy():
                        return None  # too few bytes yet to tell
                    unexpected = self._unexpected_proxy()
                    if unexpected is not None:
                        return unexpected
                if len(self._out) >= _OUT_BATCH:
                    return None
                nl = self._buf.find(b"\n")
                if nl < 0:
                    if len(self._buf) > self.limits.max_line:
                        self._skip_line = True
                        self._buf.clear()
                        return self._violation(
                            SMTPSyntaxError(500, "5.5.2", "Line too long", self.limits.max_line),
                            b"",
                        )
                    return None
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                self.progress += 1
                event = self._command(line)
                if event is not None:
                    return event
            elif state == DATA:
                event = self._data()
                if event is None:
                    return None
                return event
            elif state == BDAT:
                event = self._bdat()
                if event is None and self.state == BDAT:
                    return None
                if event is not None:
                    return event
            elif state == PROXY:
                return self._proxy()
            elif state == GREETING:
                if self._buf and self.limits.enforce_sync:
                    preview = bytes(self._buf[:64])
                    self._send(
                        _reply(554, "5.5.0", "SMTP synchronization error: sent before the banner")
                    )
                    self._close()
                    return ev.EarlyTalker(preview)
                return None
            else:
                return None
        return None

    # -- helpers ----------------------------------------------------------------

    def _send(self, reply: str | Sequence[str]) -> None:
        self._out.append(format_reply(reply))

    def _close(self) -> None:
        self.state = CLOSED
        self._buf.clear()
        self._pending = None

    def _reset_transaction(self) -> None:
        self.in_transaction = False
        self.recipients = 0
        self._utf8_txn = False
        self._via_bdat = False
        self._bdat_parts = []
        self._bdat_tail = b""
        self._bdat_size = 0
        self._bdat_failed = None

    def _decide(self, event: ev.Event) -> ev.Event:
        self._pending = event
        return event

    def _skip_long_line(self) -> bool:
        nl = self._buf.find(b"\n")
        if nl < 0:
            self._buf.clear()
            return False
        del self._buf[: nl + 1]
        self._skip_line = False
        return True

    def _violation(self, error: SMTPError, line: bytes, *, unknown: bool = False) -> ev.Event:
        """Answer a refused command; close after too many."""
        if unknown:
            self._unknown += 1
            over = self._unknown > self.limits.max_unknown
        else:
            self._errors += 1
            over = self._errors > self.limits.max_errors
        if over:
            return self._drop(
                "Too many " + ("unknown commands" if unknown else "syntax or protocol errors"),
                f"too many {'unknown commands' if unknown else 'errors'}: {error}",
            )
        self._out.append(error.reply)
        return ev.ProtocolViolation(error, line)

    def _drop(self, text: str, reason: str) -> ev.Event:
        """421 and close: the session used up one of its limits."""
        self._send(_reply(421, "4.7.0", f"{self.limits.hostname} {text}, closing connection"))
        self._close()
        return ev.Closed(reason)

    def _message_over(self) -> None:
        """A message's data has been answered: the next one may again start
        with a free RSET, HELO or EHLO, and STARTTLS."""
        if len(self._free_nonmail) < len(_NONMAIL_FREE_KEYS):
            self._free_nonmail = set(_NONMAIL_FREE_KEYS)

    def _sync_error(self, line: bytes) -> ev.Event:
        self._send(
            _reply(554, "5.5.0", "SMTP synchronization error: sent without waiting for a reply")
        )
        self._close()
        return ev.Closed(f"synchronization error after {line[:32]!r}")

    # -- PROXY ------------------------------------------------------------------

    def _maybe_proxy(self) -> bool:
        """True while the first bytes could still begin a PROXY header (they
        may arrive split across packets: ``PRO``, then ``XY TCP4 ...``). The
        v2 signature begins with blank lines, which a client may send on their
        own: only its NUL (the fifth byte) on tells it apart."""
        buf = self._buf
        n = len(buf)
        return (n < len(_PROXY_V1) and _PROXY_V1.startswith(buf)) or (
            5 <= n < len(proxy.V2_SIGNATURE) and proxy.V2_SIGNATURE.startswith(buf)
        )

    def _unexpected_proxy(self) -> ev.Event | None:
        """A PROXY header from a host that is not a proxy (not in hosts_proxy)
        is refused outright rather than read as commands, so a proxy missing
        from the list shows up as such in the log. Checked on the first bytes
        of the session only."""
        buf = self._buf
        if buf.startswith(proxy.V2_SIGNATURE) or buf.startswith(_PROXY_V1):
            self._send(_reply(554, "5.7.0", "PROXY protocol header not accepted from this host"))
            self._close()
            return ev.ProxyRejected("PROXY header from a host not in hosts_proxy", 0, True)
        self._started = True
        return None

    def _proxy(self) -> ev.Event | None:
        try:
            header = proxy.parse_header(self._buf, max_length=self.limits.proxy_max_length)
        except IncompleteHeader:
            return None
        except ProxyProtocolError as exc:
            self._close()
            return ev.ProxyRejected(exc.reason, exc.offset)
        del self._buf[: header.consumed]
        self.state = GREETING
        return ev.ProxyReceived(header)

    # -- commands ---------------------------------------------------------------

    def _command(self, line: bytes) -> ev.Event | None:
        offer = self.offer
        smtputf8 = offer.smtputf8
        try:
            cmd = smtpline.parse_command(line, smtputf8=smtputf8, max_length=self.limits.max_line)
        except SMTPSyntaxError as exc:
            return self._violation(exc, line, unknown=exc.status == "5.5.1")
        verb = cmd.verb
        if self.limits.enforce_sync and self._buf and verb not in ("BDAT", "QUIT"):
            if verb in _GROUP_ENDERS or not (offer.pipelining and self.esmtp):
                return self._sync_error(line)
        if verb not in _MAIL_VERBS and offer.max_nonmail:
            free = _NONMAIL_FREE.get(verb)
            if free is not None and free in self._free_nonmail:
                self._free_nonmail.discard(free)
            else:
                self._nonmail += 1
                if self._nonmail > offer.max_nonmail:
                    return self._drop(
                        "Too many non-mail commands",
                        f"more than {offer.max_nonmail} non-mail commands (last was {verb})",
                    )
        handler = _DISPATCH.get(verb)
        if handler is None:
            return self._violation(SMTPError(502, "5.5.1", f"{verb} command not implemented"), line)
        return handler(self, cmd, line)

    def _helo(self, cmd: smtpline.Command, line: bytes) -> ev.Event:
        assert cmd.argument is not None
        name = cmd.argument.split(" ", 1)[0]
        extended = cmd.verb == "EHLO"
        lim, offer = self.limits, self.offer
        if self.in_transaction:
            self._reset_transaction()
        if not extended:
            return self._decide(ev.Hello(name, False, (f"250 {lim.hostname}",)))
        lines = [f"250-{lim.hostname} Hello {name}"]
        if offer.pipelining:
            lines.append("250-PIPELINING")
        lines.append(f"250-SIZE {offer.size_limit}" if offer.size_limit else "250-SIZE")
        if offer.eightbitmime:
            lines.append("250-8BITMIME")
        if offer.smtputf8:
            lines.append("250-SMTPUTF8")
        lines.append("250-ENHANCEDSTATUSCODES")
        if offer.chunking:
            lines.append("250-CHUNKING")
        if offer.dsn:
            lines.append("250-DSN")
        if offer.starttls and not self.tls_active:
            lines.append("250-STARTTLS")
        if offer.vrfy:
            lines.append("250-VRFY")
        lines.append("250 HELP")
        return self._decide(ev.Hello(name, True, tuple(lines)))

    def _mail(self, cmd: smtpline.Command, line: bytes) -> ev.Event:
        self._mail_commands += 1
        most = self.limits.max_messages
        if most and self._mail_commands > most:
            return self._drop("Too many messages in this connection",
                              f"more than {most} MAIL commands")  # fmt: skip
        if self.helo is None:
            return self._violation(SMTPError(503, "5.5.1", "Send HELO or EHLO first"), line)
        if self.in_transaction:
            return self._violation(SMTPError(503, "5.5.1", "Nested MAIL command"), line)
        if self.offer.require_tls and not self.tls_active:
            return self._violation(
                SMTPError(530, "5.7.0", "Must issue a STARTTLS command first"), line
            )
        assert cmd.path is not None
        offered = self.offer.params
        if not self.esmtp:
            offered = Offered(offered.size_limit, False, False, False)
            if cmd.params:
                return self._violation(SMTPError(555, "5.5.4", "MAIL parameters need EHLO"), line)
        try:
            params = parse_mail_params(cmd.params, offered)
        except SMTPError as exc:
            return self._violation(exc, line)
        if not params.smtputf8 and not cmd.path.mailbox.isascii():
            return self._violation(
                SMTPError(553, "5.6.7", "Non-ASCII address needs the SMTPUTF8 parameter"), line
            )
        return self._decide(ev.MailFrom(cmd.path, params, cmd.params))

    def _rcpt(self, cmd: smtpline.Command, line: bytes) -> ev.Event:
        if not self.in_transaction:
            return self._violation(SMTPError(503, "5.5.1", "Need MAIL before RCPT"), line)
        assert cmd.path is not None
        if cmd.path.is_null:
            return self._violation(SMTPError(553, "5.1.3", "Null recipient not allowed"), line)
        if not self._utf8_txn and not cmd.path.mailbox.isascii():
            return self._violation(
                SMTPError(553, "5.6.7", "Non-ASCII address needs MAIL ... SMTPUTF8"), line
            )
        if self.recipients >= self.limits.max_recipients:
            # RFC 5321 4.5.3.1.10: 452 for the excess, which the client sends
            # again in a later transaction. A client that keeps going past as
            # many again (Postfix's smtpd_recipient_overshoot_limit) is abusive:
            # each further one counts as an error, so the session ends soon.
            self._excess += 1
            error = SMTPError(452, "4.5.3", "Too many recipients")
            if self._excess > self.limits.max_recipients:
                return self._violation(error, line)
            self._out.append(error.reply)
            return ev.ProtocolViolation(error, line)
        offered = self.offer.params if self.esmtp else Offered(0, False, False, False)
        try:
            params = parse_rcpt_params(cmd.params, offered)
        except SMTPError as exc:
            return self._violation(exc, line)
        return self._decide(ev.RcptTo(cmd.path, params, cmd.params))

    def _data_cmd(self, cmd: smtpline.Command, line: bytes) -> ev.Event | None:
        if not self.in_transaction:
            return self._violation(SMTPError(503, "5.5.1", "Need MAIL command"), line)
        if self._via_bdat:
            return self._violation(SMTPError(503, "5.5.1", "DATA after BDAT"), line)
        if not self.recipients:
            return self._violation(SMTPError(503, "5.5.1", "No valid recipients"), line)
        self._send("354 End data with <CR><LF>.<CR><LF>")
        self._scanner = DataScanner(
            self.offer.size_limit or None, bare_newline=self.limits.bare_newline
        )
        self._data_parts = []
        self.state = DATA
        return None

    def _data(self) -> ev.Event | None:
        scanner = self._scanner
        assert scanner is not None
        if not self._buf:
            return None
        chunk = bytes(self._buf)
        self._buf.clear()
        if b"\n" in chunk:
            self.progress += 1
        part = scanner.feed(chunk)
        if part:
            self._data_parts.append(part)
        if not scanner.done:
            return None
        self._buf += scanner.remainder
        self.state = COMMAND
        self._scanner = None
        parts, self._data_parts = self._data_parts, []
        error = scanner.error
        if error is not None:
            self._out.append(error.reply)
            self._reset_transaction()
            self._message_over()
            return ev.MessageRefused(error, "DATA")
        return self._decide(ev.MessageReceived(b"".join(parts), "DATA"))

    def _bdat_cmd(self, cmd: smtpline.Command, line: bytes) -> ev.Event | None:
        assert cmd.chunk_size is not None
        self._bdat_left = cmd.chunk_size
        self.state = BDAT
        error: SMTPError | None = None
        if not self.offer.chunking or not self.esmtp:
            error = SMTPError(503, "5.5.1", "CHUNKING not offered")
        elif not self.in_transaction or not self.recipients:
            error = SMTPError(503, "5.5.1", "Need MAIL and RCPT before BDAT")
        elif self._bdat_failed is None:
            self._bdat_size += cmd.chunk_size
            if self.offer.size_limit and self._bdat_size > self.offer.size_limit:
                self._bdat_failed = SMTPError(
                    552, "5.3.4", "Message size exceeds fixed maximum message size"
                )
        self._via_bdat = self._via_bdat or error is None
        self._bdat_last = cmd.last
        self._bdat_error = error
        return None

    def _bdat(self) -> ev.Event | None:
        buf = self._buf
        take = min(self._bdat_left, len(buf))
        if take:
            if take >= 65536 or buf.find(b"\n", 0, take) >= 0:
                self.progress += 1  # a line, or a good piece of binary data
            if self._bdat_error is None and self._bdat_failed is None:
                self._bdat_piece(bytes(buf[:take]))
            del buf[:take]
            self._bdat_left -= take
        if self._bdat_left:
            return None
        self.state = COMMAND
        if self._bdat_error is not None:
            error, self._bdat_error = self._bdat_error, None
            return self._violation(error, b"BDAT")
        failed = self._bdat_failed
        if failed is not None:
            self._out.append(failed.reply)
            if self._bdat_last:
                self._reset_transaction()
                self._message_over()
                return ev.MessageRefused(failed, "BDAT")
            return None
        if not self._bdat_last:
            self._send(_reply(250, "2.0.0", f"{self._bdat_size} octets received"))
            return None
        if self._bdat_tail:  # the message ends in a bare CR
            self._bdat_tail = b""
            if self.limits.bare_newline == "reject":
                return self._bdat_refuse(_BARE_ERROR)
            self._bdat_parts.append(b"\r\n")
        content = b"".join(self._bdat_parts)
        self._bdat_parts = []
        return self._decide(ev.MessageReceived(content, "BDAT"))

    def _bdat_refuse(self, error: SMTPError) -> ev.Event:
        self._out.append(error.reply)
        self._reset_transaction()
        self._message_over()
        return ev.MessageRefused(error, "BDAT")

    def _bdat_piece(self, piece: bytes) -> None:
        """Check (or normalise) line endings of BDAT content as it arrives. A
        CR at the end of a piece is held back until the next byte shows
        whether it starts a CRLF."""
        s = self._bdat_tail + piece if self._bdat_tail else piece
        if s.endswith(b"\r"):
            s, self._bdat_tail = s[:-1], b"\r"
        else:
            self._bdat_tail = b""
        if _BARE.search(s) is not None:
            if self.limits.bare_newline == "reject":
                self._bdat_failed = _BARE_ERROR
                self._bdat_parts = []
                return
            s = re.sub(rb"\r\n|\r|\n", b"\r\n", s)
        if s:
            self._bdat_parts.append(s)

    def _rset(self, cmd: smtpline.Command, line: bytes) -> ev.Event:
        self._reset_transaction()
        self._send(_reply(250, "2.0.0", "OK"))
        return ev.Reset()

    def _noop(self, cmd: smtpline.Command, line: bytes) -> None:
        self._send(_reply(250, "2.0.0", "OK"))

    def _help(self, cmd: smtpline.Command, line: bytes) -> None:
        self._send(_reply(214, "2.0.0", _HELP))

    def _quit(self, cmd: smtpline.Command, line: bytes) -> ev.Event:
        self._send(_reply(221, "2.0.0", f"{self.limits.hostname} closing connection"))
        self._close()
        return ev.Quit()

    def _vrfy(self, cmd: smtpline.Command, line: bytes) -> ev.Event | None:
        if not self.offer.vrfy:
            self._send(_reply(502, "5.5.1", "VRFY command is disabled"))
            return None
        assert cmd.argument is not None
        return self._decide(ev.Verify(cmd.argument))

    def _starttls(self, cmd: smtpline.Command, line: bytes) -> ev.Event:
        if not self.offer.starttls:
            return self._violation(SMTPError(502, "5.5.1", "STARTTLS not available"), line)
        if self.tls_active:
            return self._violation(SMTPError(503, "5.5.1", "TLS already active"), line)
        if self.in_transaction:
            return self._violation(SMTPError(503, "5.5.1", "STARTTLS inside a transaction"), line)
        return self._decide(ev.StartTLS())


_Handler = Callable[[ServerConnection, smtpline.Command, bytes], "ev.Event | None"]
_DISPATCH: dict[str, _Handler] = {
    "EHLO": ServerConnection._helo,
    "HELO": ServerConnection._helo,
    "MAIL": ServerConnection._mail,
    "RCPT": ServerConnection._rcpt,
    "DATA": ServerConnection._data_cmd,
    "BDAT": ServerConnection._bdat_cmd,
    "RSET": ServerConnection._rset,
    "NOOP": ServerConnection._noop,
    "HELP": ServerConnection._help,
    "QUIT": ServerConnection._quit,
    "VRFY": ServerConnection._vrfy,
    "STARTTLS": ServerConnection._starttls,
}
