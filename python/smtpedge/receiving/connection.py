"""One client connection: the asyncio side of an SMTP session.

``Connection`` feeds bytes to the sans-I/O protocol, answers its decision
events (at once when no handler hook has a say, else in a task), keeps the
timers, writes big messages to the spool as they arrive, and hands finished
messages to the server's queue. An idle connection holds no task.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import itertools
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast

from smtpedge import metrics
from smtpedge.errors import TLSError
from smtpedge.log import info as log_info
from smtpedge.log import logger, process_id
from smtpedge.protocol import events as ev
from smtpedge.protocol.server import ServerConnection
from smtpedge.receiving.received import protocol_name
from smtpedge.receiving.relay import RELAY_DENIED
from smtpedge.receiving.session import Envelope, Recipient, Session
from smtpedge.tls.engine import TLSEngine

if TYPE_CHECKING:
    from smtpedge.config import Config
    from smtpedge.protocol.server import Limits, Offer
    from smtpedge.receiving.limits import ConnectionLimits
    from smtpedge.receiving.relay import RelayPolicy
    from smtpedge.tls.server import ServerTLS

__all__ = ["Connection", "ConnectionHost", "describe_error", "fmt_address", "sock_address"]

_READ_PAUSE = 1024 * 1024  # pause reading when this much input waits on a hook
_SPILL_CHUNK = 256 * 1024  # write big messages out in pieces of about this size
_REFUSALS_LOGGED = 5  # refusals logged one by one per session; the rest are counted
# After the last reply, input the client still sends is read and dropped for
# at most this long and this much, so the kernel does not answer it with a
# reset that would throw away replies not yet delivered (a lingering close).
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 64 * 1024
_session_ids = itertools.count(1)
_MESSAGE_STATES = frozenset({"DATA", "BDAT"})
_NOT_QUEUED = "451 4.3.0 Local error in processing: message not queued"


def sock_address(sockaddr: Any) -> tuple[str, int]:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        host = str(sockaddr[0])
        if ":" not in host:
            return host, int(sockaddr[1])
        with contextlib.suppress(ValueError):
            ip = ipaddress.ip_address(host.split("%")[0])
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                host = str(ip.ipv4_mapped)
        return host, int(sockaddr[1])
    return ("unknown", 0)


def describe_error(exc: BaseException) -> str:
    """The real cause of a storage failure, short: ``No space left on device
    (ENOSPC): '/var/spool/...'``, or the exception's own text."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, str(exc.errno))
        where = f": {exc.filename!r}" if exc.filename else ""
        return f"{exc.strerror or os.strerror(exc.errno)} ({name}){where}"
    return f"{type(exc).__name__}: {exc}"


def fmt_address(addr: tuple[str, int] | None) -> str:
    if addr is None:
        return "[unknown]"
    return f"[{addr[0]}]:{addr[1]}"


async def _verified_name(ip: str) -> str | None:
    """The client's reverse DNS name, if it resolves forward to the same address."""
    loop = asyncio.get_running_loop()
    try:
        name, _, _ = await asyncio.wait_for(
            loop.run_in_executor(None, socket.gethostbyaddr, ip), 5.0
        )
        infos = await asyncio.wait_for(loop.getaddrinfo(name, None), 5.0)
    except (OSError, TimeoutError):
        return None
    if any(str(info[4][0]) == ip for info in infos):
        return str(name)
    return None


class ConnectionHost(Protocol):
    """What a connection needs from the server that accepted it
    (``smtpedge.Server`` is one): its configuration and policies, the set of
    live connections, and the queue."""

    config: Config
    hostname: str
    banner: str
    hooks: dict[str, Any]
    limits: Limits
    relay: RelayPolicy
    connections: ConnectionLimits
    tls: ServerTLS | None
    active: set[Connection]
    # Where the transport reads into; the bytes are copied out at once, so
    # every connection of one event loop shares it (asyncio's own reads would
    # allocate, and on most systems map and unmap, a 256 KB buffer each).
    read_buffer: memoryview
    needs_name: bool  # some host list names clients by their verified DNS name
    draining: bool  # health checks fail
    stopping: bool  # new sessions get 421
    last_health_check: float  # event loop time of the last PROXY LOCAL connection
    health_check_interval: float
    # Recipient verification for local domains: the reply refusing it, or None.
    verify_recipient: Callable[[str, str], Awaitable[str | None]] | None

    def offer_for(self, ip: str, name: str | None) -> Offer: ...

    @property
    def incoming(self) -> Path:
        """Where a big message is written as it arrives."""
        ...

    async def store_message(self, session: Session, envelope: Envelope) -> tuple[str, int]:
        """Queue the message durably; its queue ID and the size stored."""
        ...

    def submit_message(
        self,
        session: Session,
        envelope: Envelope,
        done: Callable[[str, int, BaseException | None], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """``store_message`` without a task: ``done(queue_id, size, error)``
        runs in ``loop`` when the commit is over."""
        ...


class _Committing:
    """Stands for the task while a message commits without one: the
    connection is busy, and nothing may cancel the commit."""

    __slots__ = ()

    def done(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False


_COMMITTING = _Committing()


class Connection(asyncio.BufferedProtocol):
    """One client connection: feeds the protocol, runs hooks, keeps timers."""

    __slots__ = (
        "_closing",
        "_eof",
        "_last",
        "_lingering",
        "_loop",
        "_paused",
        "_progress",
        "_quit",
        "_refusals",
        "_spill",
        "_spill_error",
        "_spill_path",
        "_storing",
        "_task",
        "_timer",
        "_tls",
        "_transport",
        "_write_paused",
        "admitted",
        "counted",
        "envelope",
        "proto",
        "server",
        "session",
        "slot",
    )

    def __init__(self, server: ConnectionHost) -> None:
        self.server = server
        self._transport: asyncio.Transport | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set on connect
        self._task: asyncio.Task[None] | _Committing | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0
        self._progress = 0
        self._paused = False  # reading paused while a hook runs
        self._write_paused = False  # the client does not read its replies
        self._eof = False  # the client shut down its sending side
        self._storing = False  # a message is being committed: never cancel that
        self._refusals = 0
        self._closing = False
        self._quit = False  # the session ended with QUIT
        self._lingering = 0  # > 0: replies sent and half-closed; bytes dropped + 1
        self._spill: BinaryIO | None = None
        self._spill_error: OSError | None = None
        self._tls: TLSEngine | None = None
        self._spill_path: Path | None = None
        self.counted = False  # holds a slot of smtp_accept_max
        self.admitted: str | None = None  # the host holding a per-host slot
        self.slot: str | None = None  # its slot in the limits store (Redis)
        self.envelope = Envelope()

    # -- asyncio callbacks ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not inherit from asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        srv = self.server
        cfg = srv.config
        peer = sock_address(transport.get_extra_info("peername"))
        sock = sock_address(transport.get_extra_info("sockname"))
        # The PID in hex first: a dead worker's partial uploads are found by it.
        self.session = Session(f"{process_id():x}.{next(_session_ids)}", peer, sock)
        srv.active.add(self)
        refusal = srv.connections.open()
        self.counted = refusal is None
        expect_proxy = bool(cfg.hosts_proxy) and cfg.hosts_proxy.match(peer[0])
        self.proto = ServerConnection(srv.limits, expect_proxy=expect_proxy)
        # Kept: each get_running_loop() costs a getpid() system call.
        loop = self._loop = asyncio.get_running_loop()
        self._last = loop.time()
        if refusal is not None:
            metrics.connections.labels("refused_accept_max").inc()
            log_info("SMTP connection from %s refused: %s", fmt_address(peer), refusal)
            self.proto.refuse(f"421 4.7.0 {srv.hostname} {refusal}")
            self._flush()
            return
        if srv.stopping:
            metrics.connections.labels("refused_shutdown").inc()
            log_info("SMTP connection from %s refused: shutting down", fmt_address(peer))
            self.proto.refuse(f"421 4.3.2 {srv.hostname} Service shutting down")
            self._flush()
            return
        if expect_proxy:
            self._arm(cfg.proxy_protocol_timeout)
            return
        if self._welcome_now():
            self._flush()
        else:
            self._start(self._welcome())

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.server.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(self.server.read_buffer[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._lingering += len(data)
            if self._lingering > _LINGER_BYTES and self._transport is not None:
                self._transport.close()
            return
        if self._tls is not None:
            data = self._tls_receive(data)
            if not data:
                return
        self.proto.receive_data(data)
        if self._task is None and not self._write_paused:
            self._process()
        elif self.proto.buffered > _READ_PAUSE and not self._paused:
            assert self._transport is not None
            self._transport.pause_reading()
            self._paused = True

    def eof_received(self) -> bool | None:
        """The client shut down its sending side (a half-close): finish what it
        sent (a message and its QUIT, say), answer it, then close."""
        self._eof = True
        if self._lingering:
            return False  # the client has read what it wanted: close now
        if self._task is None and not self._write_paused:
            self._process()
        return True  # keep the transport open to send the replies

    def pause_writing(self) -> None:
        """The client is not reading its replies: stop reading and answering
        its commands until the output drains, so memory stays bounded."""
        self._write_paused = True
        if self._transport is not None and not self._paused:
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._gone or self._transport is None:
            return
        if not self._paused:
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()
        if self._task is None:
            self._process()

    def connection_lost(self, exc: Exception | None) -> None:
        srv = self.server
        srv.active.discard(self)
        if self.counted:
            srv.connections.close()
            self.counted = False
        if self.admitted is not None:
            srv.connections.release(self.admitted)
            self.admitted = None
        if self.slot is not None:
            store = srv.connections.store
            if store is not None:
                store.release(self.slot)
            self.slot = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None and not self._task.done():
            if not self._storing:  # a commit runs on, and logs its message
                self._task.cancel()
        else:
            self._discard_spill()
        if not self._closing and not self.proto.closed:
            log_info("SMTP connection from %s lost%s", self._who(),
                     f": {exc}" if exc else "")  # fmt: skip
        if self._refusals > _REFUSALS_LOGGED:
            log_info("SMTP connection from %s: %d more refusal(s) not logged one by one",
                     self._who(), self._refusals - _REFUSALS_LOGGED)  # fmt: skip

    # -- helpers ----------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return self._task is None and not self.proto.waiting and not self.proto.buffered

    @property
    def between_transactions(self) -> bool:
        """Waiting for a command with no message under way: 421 loses nothing."""
        return self.proto.closed or (self.idle and not self.proto.in_transaction)

    @property
    def _gone(self) -> bool:
        """Nothing more can be written: closed, closing or lingering."""
        t = self._transport
        return t is None or t.is_closing() or self._lingering > 0

    def _who(self) -> str:
        s = self.session
        if s.proxy_peer is not None:
            return f"{fmt_address(s.peer)} PX={fmt_address(s.proxy_peer)}"
        return fmt_address(s.peer)

    def _refused(self, fmt: str, *args: Any) -> None:
        """Log a refusal: the first few of a session one by one, the rest
        summed up in one line when it ends, so no client can flood the log."""
        self._refusals += 1
        if self._refusals <= _REFUSALS_LOGGED:
            log_info(fmt, *args)

    def _arm(self, timeout: float) -> None:
        loop = self._loop
        self._last = loop.time()
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_later(timeout, self._check_timer, timeout)

    def _check_timer(self, timeout: float) -> None:
        self._timer = None
        if self._gone:
            return
        loop = self._loop
        state = self.proto.state
        if state == "PROXY":
            metrics.connections.labels("timeout").inc()
            log_info("PROXY header timeout from proxy %s after %.1fs: closed without banner",
                     fmt_address(self.session.peer), timeout)  # fmt: skip
            self._close()
            return
        cfg = self.server.config
        if self._tls is not None and not self._tls.established:
            metrics.tls_handshakes.labels("timeout").inc()
            log_info("TLS handshake timeout for %s after %.1fs: closed", self._who(), timeout)
            self._closing = True
            self._close()
            return
        limit = cfg.smtp_data_timeout if state in ("DATA", "BDAT") else cfg.smtp_receive_timeout
        left = self._last + limit - loop.time()
        if left > 0 or self._task is not None:
            # Check again when this state's time is up, or sooner if the state
            # may change to one with a shorter timeout.
            shortest = min(cfg.smtp_receive_timeout, cfg.smtp_data_timeout)
            self._timer = loop.call_later(min(max(left, 0.05), shortest), self._check_timer, limit)
            return
        log_info("SMTP %s timeout for %s after %.1fs%s", "data" if state in ("DATA", "BDAT")
                 else "command", self._who(), limit,
                 ": not reading its replies" if self._write_paused else "")  # fmt: skip
        metrics.connections.labels("timeout").inc()
        self.proto.timeout()
        self._flush()
        if self._write_paused and self._transport is not None:
            self._transport.abort()  # its unread replies would never drain

    def _start(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._task = self._loop.create_task(coro)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._internal_error(exc)
            return
        self._resume()

    def _internal_error(self, exc: BaseException) -> None:
        """A bug met while answering: log it, end the session with 421."""
        logger.error("internal error in session %s from %s: %r", self.session.id,
                     self._who(), exc, exc_info=exc)  # fmt: skip
        self.proto.refuse("421 4.3.0 Local error in processing, closing connection")
        self._flush()

    def _resume(self) -> None:
        """A hook or a commit is over: read and answer again."""
        self._last = self._loop.time()  # the client waited for us
        if self._paused and self._transport is not None:
            self._paused = False
            if not self._write_paused:
                self._transport.resume_reading()
        if not self._write_paused:
            self._process()

    def _flush(self) -> None:
        t = self._transport
        if t is None or self._lingering:
            return
        proto = self.proto
        tls = self._tls
        if tls is None:  # the common case, cheap when there is nothing to send
            if proto.output_pending:
                out = proto.data_to_send()
                if not t.is_closing():
                    t.write(out)
            if proto.closed:
                self._close()
            return
        out = proto.data_to_send()
        if tls is not None and tls.established and not t.is_closing():
            try:
                if out:
                    tls.write(out)
                if self.proto.closed:
                    tls.close()  # close_notify
            except TLSError:
                pass
            out = tls.outgoing()
        if out and not t.is_closing():
            t.write(out)
        if self.proto.closed:
            self._close()

    def _close(self) -> None:
        self._closing = True
        t = self._transport
        if t is None or t.is_closing() or self._lingering:
            return
        if self._eof or self._quit or not self.proto.closed or not t.can_write_eof():
            # (After QUIT a client sends nothing more, RFC 5321 4.1.1.10.)
            t.close()
            return
        # The server ended the session (421, 554, ...) with replies on their
        # way and perhaps more input behind them: send FIN after the replies
        # and drop what the client still sends until it closes, or a while.
        try:
            t.write_eof()
        except (RuntimeError, OSError):
            t.close()
            return
        self._lingering = 1
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(_LINGER_SECONDS, t.close)
        if self._paused or self._write_paused:
            self._paused = self._write_paused = False
            with contextlib.suppress(RuntimeError):
                t.resume_reading()

    # -- TLS ----------------------------------------------------------------------------

    def _start_tls(self) -> None:
        """STARTTLS was accepted: send the 220 in the clear, then speak TLS."""
        tls = self.server.tls
        assert tls is not None
        self._flush()
        self._tls = TLSEngine(tls.context(), server_side=True)
        self._arm(self.server.config.tls_handshake_timeout)

    def _tls_receive(self, data: bytes) -> bytes:
        """Decrypt; complete the handshake first. Returns plaintext for SMTP."""
        tls = self._tls
        assert tls is not None and self._transport is not None
        tls.receive(data)
        try:
            if not tls.established:
                if not tls.handshake():
                    self._transport.write(tls.outgoing())
                    return b""
                self._tls_established()
            plain = tls.read()
        except TLSError as exc:
            out = tls.outgoing()  # the alert, if any
            if out:
                self._transport.write(out)
            metrics.tls_handshakes.labels("failed" if not tls.established else "error").inc()
            log_info("TLS error with %s: %s: closed", self._who(), exc.reason)
            self._closing = True
            self._close()
            return b""
        out = tls.outgoing()
        if out:
            self._transport.write(out)
        if tls.closed:
            self._close()
        return plain

    def _tls_established(self) -> None:
        assert self._tls is not None
        info = self._tls.info()
        self.session.tls = info
        metrics.tls_handshakes.labels("ok").inc()
        metrics.ocsp_staples.labels("stapled" if info.ocsp_stapled else "none").inc()
        self.proto.tls_started()
        cfg = self.server.config
        self._arm(min(cfg.smtp_receive_timeout, cfg.smtp_data_timeout))
        log_info("TLS with %s: %s %s%s%s", self._who(), info.version, info.cipher,
                 f" SNI={info.sni}" if info.sni else "",
                 " OCSP=stapled" if info.ocsp_stapled else "")  # fmt: skip

    def shutdown(self) -> None:
        if not self._gone:
            if self.proto.state in ("PROXY", "GREETING"):
                self._close()
                return
            self.proto.shutdown()
            self._flush()

    # -- the session ------------------------------------------------------------------

    def _admit(self) -> bool:
        """Take a per-host slot for the real client, or refuse it (421).
        A health check (a PROXY LOCAL connection from the proxy) is not counted."""
        srv = self.server
        peer = self.session.peer
        if self._health_check:
            return True
        refusal = srv.connections.admit(peer[0])
        if refusal is not None:
            self._refuse_client(refusal)
            return False
        self.admitted = peer[0]
        return True

    def _refuse_client(self, refusal: str, store: bool = False) -> None:
        kind = "store" if store else "rate" if refusal.startswith("Connection rate") else "per_host"
        metrics.connections.labels(f"refused_{kind}").inc()
        log_info("SMTP connection from %s refused: %s", self._who(), refusal)
        code = "4.3.0" if kind == "store" else "4.7.0"
        self.proto.refuse(f"421 {code} {self.server.hostname} {refusal}")

    async def _admit_shared(self) -> bool:
        """Take the client's slot in the limits store (Redis), or refuse it."""
        store = self.server.connections.store
        if store is None or self._health_check:
            return True
        refusal, self.slot = await store.admit(self.session.peer[0])
        if refusal is not None:
            self._refuse_client(refusal, store=refusal.startswith("Connection limits"))
            return False
        if self._gone:
            # The client left while Redis answered: give the slot back now.
            if self.slot is not None:
                store.release(self.slot)
                self.slot = None
            return False
        return True

    @property
    def _health_check(self) -> bool:
        header = self.session.proxy_header
        return header is not None and header.command == "LOCAL"

    def _greet(self, name: str | None) -> None:
        srv = self.server
        cfg = srv.config
        if self.proto.state != "GREETING":
            return
        if self.proto.buffered and cfg.smtp_enforce_sync:
            return  # _process reports the early talker
        self.proto.greet(srv.banner, srv.offer_for(self.session.peer[0], name))
        if not self._health_check:
            metrics.connections.labels("accepted").inc()
        self._arm(min(cfg.smtp_receive_timeout, cfg.smtp_data_timeout))

    def _welcome_now(self) -> bool:
        """Admit and greet without waiting, when nothing needs awaiting;
        return False when ``_welcome`` must run as a task."""
        srv = self.server
        if srv.needs_name or srv.config.smtp_banner_delay > 0:
            return False
        if srv.connections.store is not None and not self._health_check:
            return False
        if self._admit():
            self._greet(None)
        return True

    async def _welcome(self) -> None:
        """Admit the real client (limits), look up its name if a host list
        needs it, wait out any banner delay, then greet it."""
        srv = self.server
        if not self._admit() or not await self._admit_shared():
            return
        name = await _verified_name(self.session.peer[0]) if srv.needs_name else None
        self.session.sender_host_name = name
        if srv.config.smtp_banner_delay > 0:
            await asyncio.sleep(srv.config.smtp_banner_delay)
        self._greet(name)

    def _process(self) -> None:
        """Run protocol events until input runs out, a hook must be awaited,
        or the client stops reading its replies."""
        proto = self.proto
        while self._task is None:
            event = proto.next_event()
            if event is None:
                if not proto.output_pending or proto.closed:
                    break
                self._flush()  # a batch of replies is ready: send it first
                if self._write_paused:
                    break
                continue
            if event.needs_reply:
                if not self._decide_now(event):
                    self._start(self._decide(event))
                    break
                continue
            self._inform(event)
        if proto.progress != self._progress:
            # A line (command or data) was completed: its timeout starts again.
            self._progress = proto.progress
            self._last = self._loop.time()
        if (
            self._spill is not None
            or self._spill_error is not None
            or (proto.state in _MESSAGE_STATES and proto.data_pending >= _SPILL_CHUNK)
        ):
            self._spill_data()
        self._flush()
        if self._eof and self._task is None and not self._write_paused and not proto.closed:
            # Everything the client sent before its half-close is answered.
            log_info("SMTP connection from %s closed by the client (end of input, %d "
                     "message%s)", self._who(), self.session.messages,
                     "" if self.session.messages == 1 else "s")  # fmt: skip
            self._close()

    def _spill_data(self) -> None:
        """Write a big message to a spool file as it arrives, so memory holds
        at most a chunk of it, whatever the size limit."""
        proto = self.proto
        if proto.state not in ("DATA", "BDAT"):
            return
        if self._spill_error is not None:
            proto.take_data()  # the message gets 451 at its end: drop it as it comes
            return
        try:
            if self._spill is None:
                if proto.data_pending <= self.server.config.spool_inline_max:
                    return
                name = f"{self.session.id}.{self.session.messages}"
                self._spill_path = self.server.incoming / name
                self._spill = open(self._spill_path, "wb")
            elif proto.data_pending < _SPILL_CHUNK:
                return
            self._spill.write(proto.take_data())
        except OSError as exc:
            self._discard_spill()
            self._spill_error = exc
            proto.take_data()

    def _discard_spill(self) -> None:
        self._spill_error = None
        if self._spill is not None:
            with contextlib.suppress(OSError):
                self._spill.close()
            self._spill = None
        if self._spill_path is not None:
            with contextlib.suppress(OSError):
                self._spill_path.unlink(missing_ok=True)
            self._spill_path = None

    def _inform(self, event: ev.Event) -> None:
        s = self.session
        if isinstance(event, ev.ProxyReceived):
            self._proxy(event.header)
        elif isinstance(event, ev.ProxyRejected) and event.unexpected:
            metrics.proxy_rejected.labels("not in hosts_proxy").inc()
            log_info("PROXY header from %s, which is not in hosts_proxy: refused",
                     fmt_address(s.peer))  # fmt: skip
        elif isinstance(event, ev.ProxyRejected):
            metrics.proxy_rejected.labels(metrics.proxy_reason(event.reason)).inc()
            log_info("PROXY header refused from proxy %s: %s (at byte %d): closed",
                     fmt_address(s.peer), event.reason, event.offset)  # fmt: skip
        elif isinstance(event, ev.EarlyTalker):
            log_info("SMTP early talker %s: sent %r before the banner: refused",
                     self._who(), event.preview[:32])  # fmt: skip
        elif isinstance(event, ev.ProtocolViolation):
            line = event.line.rstrip(b"\r\n")[:80].decode("utf-8", "replace")
            self._refused("SMTP protocol error from %s in %r: %s", self._who(), line,
                          event.error.reply.decode().strip())  # fmt: skip
        elif isinstance(event, ev.MessageRefused):
            metrics.messages.labels(f"{event.error.code // 100}xx").inc()
            self._discard_spill()
            self._refused("message from %s refused in %s: %s", self._who(), event.command,
                          event.error.reply.decode().strip())  # fmt: skip
            self.envelope = Envelope()
        elif isinstance(event, ev.Reset):
            self._discard_spill()
            self.envelope = Envelope()
            if "RSET" in self.server.hooks:
                self._start(self._call_void("RSET"))
        elif isinstance(event, ev.Quit):
            self._quit = True
            if not (self._health_check and not s.messages):  # checks come every few seconds
                log_info("SMTP connection from %s closed by QUIT (%d message%s)", self._who(),
                         s.messages, "" if s.messages == 1 else "s")  # fmt: skip
            if "QUIT" in self.server.hooks:
                self._start(self._call_void("QUIT"))
        elif isinstance(event, ev.Closed):
            log_info("SMTP connection from %s closed: %s", self._who(), event.reason)

    async def _call_void(self, verb: str) -> None:
        await self.server.hooks[verb](self.server, self.session, self.envelope)

    def _proxy(self, header: Any) -> None:
        """Adopt the addresses of a PROXY header (LOCAL, UNKNOWN and UNIX
        headers keep the real endpoints), then run the hook and greet."""
        s = self.session
        s.proxy_header = header
        metrics.proxy_headers.labels(str(header.version), header.command).inc()
        if header.command == "LOCAL":
            srv = self.server
            now = self._loop.time()
            if srv.last_health_check:
                srv.health_check_interval = now - srv.last_health_check
            srv.last_health_check = now
            metrics.connections.labels("health_check").inc()
            if srv.draining:
                refused = srv.connections.refused_check()
                log_info("health check from %s refused: draining (%d refused)",
                         fmt_address(s.peer), refused)  # fmt: skip
                self.proto.refuse(f"421 4.3.2 {srv.hostname} Draining: not accepting sessions")
                self._flush()
                return
        src, dst = header.source, header.destination
        if src is not None and dst is not None and src[1] is not None and dst[1] is not None:
            s.proxy_peer = s.peer
            s.peer = (str(src[0]), int(src[1]))
            s.proxy_destination = (str(dst[0]), int(dst[1]))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if "PROXY" in self.server.hooks:
            self._start(self._proxy_hook(header))
        elif not self._welcome_now():
            self._start(self._welcome())

    async def _proxy_hook(self, header: Any) -> None:
        s = self.session
        ok = await self.server.hooks["PROXY"](self.server, s, self.envelope, header)
        if ok is not None and not ok:
            log_info("PROXY header from proxy %s refused by handle_PROXY: closed",
                     fmt_address(s.proxy_peer or s.peer))  # fmt: skip
            self.proto.close()
            return
        if not self._welcome_now():
            await self._welcome()

    def _decide_now(self, event: ev.Event) -> bool:
        """Answer a decision event at once when no hook has a say in it."""
        hooks = self.server.hooks
        if isinstance(event, ev.StartTLS):
            if self.server.tls is None:
                self.proto.respond("454 4.7.0 TLS not available")
            elif self.proto.respond("220 2.0.0 Ready to start TLS"):
                self._start_tls()
            return True
        if isinstance(event, ev.RcptTo):
            if not self.server.relay.permits(
                event.path.domain, self.session.peer[0], self.session.sender_host_name
            ):
                self._refused("H=%s F=<%s> rejected RCPT <%s>: relay not permitted", self._who(),
                              self.envelope.mail_from, event.path.mailbox)  # fmt: skip
                self.proto.respond(RELAY_DENIED)
                return True
            if "RCPT" in hooks or (
                self.server.verify_recipient is not None
                and self.server.relay.is_local(event.path.domain)
            ):  # fmt: skip
                return False
            if self.proto.respond("250 2.1.5 Recipient OK"):
                self.envelope.recipients.append(
                    Recipient(event.path.mailbox, event.params, event.raw_params)
                )
            return True
        if isinstance(event, ev.MailFrom):
            if "MAIL" in hooks:
                return False
            if self.proto.respond("250 2.1.0 Sender OK"):
                self._set_sender(event)
            return True
        if isinstance(event, ev.Hello):
            if ("EHLO" if event.extended else "HELO") in hooks:
                return False
            if self.proto.respond(event.responses):
                self._set_hello(event)
            return True
        if isinstance(event, ev.MessageReceived):
            if "DATA" in hooks or self._spill is not None or self._spill_error is not None:
                return False
            self._store_now(event)
            return True
        return False

    def _store_now(self, event: ev.MessageReceived) -> None:
        """Queue a message that no hook sees and that was not spooled as it
        came, without a task: the reply goes out when the commit is over
        (``_stored``); until then the connection is busy, as with a task."""
        self.envelope.content = event.content
        started = time.perf_counter()
        try:
            self.server.submit_message(
                self.session, self.envelope,
                lambda qid, size, error: self._stored(started, qid, size, error), self._loop,
            )  # fmt: skip
        except Exception as exc:
            logger.error("message from %s NOT queued: %s", self._who(), describe_error(exc))
            self._answer_message(_NOT_QUEUED, None, len(event.content), started)
            return
        self._storing = True
        self._task = _COMMITTING

    def _stored(self, started: float, qid: str, size: int, error: BaseException | None) -> None:
        self._storing = False
        self._task = None
        try:
            if error is None:
                self._answer_message(f"250 2.0.0 OK id={qid}", qid, size, started)
            else:
                logger.error("message from %s NOT queued: %s", self._who(), describe_error(error))
                self._answer_message(_NOT_QUEUED, None, size, started)
        except Exception as exc:
            self._internal_error(exc)
            return
        self._resume()

    def _set_hello(self, event: ev.Hello) -> None:
        self._discard_spill()
        self.session.host_name = event.name
        self.session.extended_smtp = event.extended
        self.envelope = Envelope()

    def _set_sender(self, event: ev.MailFrom) -> None:
        env = self.envelope
        env.mail_from = event.path.mailbox
        env.mail_params = event.params
        env.raw_mail_params = event.raw_params
        env.smtputf8 = event.params.smtputf8

    async def _decide(self, event: ev.Event) -> None:
        srv = self.server
        s, env = self.session, self.envelope
        hooks = srv.hooks
        reply: Any = None
        if isinstance(event, ev.Hello):
            verb = "EHLO" if event.extended else "HELO"
            if verb == "EHLO" and "EHLO" in hooks:
                reply = await hooks["EHLO"](srv, s, env, event.name, list(event.responses))
            elif verb == "HELO" and "HELO" in hooks:
                reply = await hooks["HELO"](srv, s, env, event.name)
            if self.proto.respond(reply or list(event.responses)):
                self._set_hello(event)
        elif isinstance(event, ev.MailFrom):
            address = event.path.mailbox
            if "MAIL" in hooks:
                opts = [k if v is None else f"{k}={v}" for k, v in event.raw_params]
                reply = await hooks["MAIL"](srv, s, env, address, opts)
            if self.proto.respond(reply or "250 2.1.0 Sender OK"):
                self._set_sender(event)
        elif isinstance(event, ev.RcptTo):
            address = event.path.mailbox
            verify = srv.verify_recipient
            if verify is not None and srv.relay.is_local(event.path.domain):
                reply = await verify(address, env.mail_from or "")
                if reply is not None:
                    what = "unknown recipient" if reply.startswith("5") else "cannot verify"
                    self._refused("H=%s F=<%s> rejected RCPT <%s>: %s: %s", self._who(),
                                  env.mail_from, address, what, reply[10:])  # fmt: skip
                    self.proto.respond(reply)
                    return
            if "RCPT" in hooks:
                opts = [k if v is None else f"{k}={v}" for k, v in event.raw_params]
                reply = await hooks["RCPT"](srv, s, env, address, opts)
            if self.proto.respond(reply or "250 2.1.5 Recipient OK"):
                env.recipients.append(Recipient(address, event.params, event.raw_params))
        elif isinstance(event, ev.MessageReceived):
            await self._message(event)
        elif isinstance(event, ev.Verify):
            if "VRFY" in hooks:
                reply = await hooks["VRFY"](srv, s, env, event.argument)
            self.proto.respond(
                reply or "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
            )
        elif isinstance(event, ev.StartTLS):  # pragma: no cover - answered in _decide_now
            self.proto.respond("454 4.7.0 TLS not available")
        else:  # pragma: no cover - every decision event is handled above
            raise AssertionError(f"unhandled event {event!r}")

    async def _message(self, event: ev.MessageReceived) -> None:
        srv = self.server
        s, env = self.session, self.envelope
        if self._spill_error is not None:
            logger.error("message from %s NOT queued: cannot write its spool file: %s",
                         self._who(), describe_error(self._spill_error))  # fmt: skip
            self._discard_spill()
            self.proto.respond(_NOT_QUEUED)
            metrics.messages.labels("4xx").inc()
            self.envelope = Envelope()
            return
        size = len(event.content)
        reply: str | None = None
        qid = None
        started = time.perf_counter()
        try:
            if self._spill is not None:
                spill, self._spill = self._spill, None
                try:
                    spill.write(event.content)
                finally:
                    spill.close()
                assert self._spill_path is not None
                env.content_file = str(self._spill_path)
                size = self._spill_path.stat().st_size
            else:
                env.content = event.content
            if "DATA" in srv.hooks:
                if env.content is None and env.content_file is not None:
                    env.content = Path(env.content_file).read_bytes()
                reply = await srv.hooks["DATA"](srv, s, env)
            if reply is None:
                # From here the committer owns the spool file: it moves it into
                # the queue, or removes it if the message cannot be stored.
                self._spill_path = None
                self._storing = True
                try:
                    qid, size = await srv.store_message(s, env)
                except Exception as exc:
                    logger.error("message from %s NOT queued: %s", self._who(),
                                 describe_error(exc))  # fmt: skip
                    reply = _NOT_QUEUED
                else:
                    reply = f"250 2.0.0 OK id={qid}"
                finally:
                    self._storing = False
        except OSError as exc:  # the spool file could not be finished or read
            logger.error("message from %s NOT queued: %s", self._who(), describe_error(exc))
            reply = _NOT_QUEUED
        finally:
            self._discard_spill()  # queued (moved into the spool), or not wanted
        self._answer_message(reply, qid, size, started)

    def _answer_message(self, reply: str, qid: str | None, size: int, started: float) -> None:
        """Send a message's final reply (250 once it is queued), count and log it."""
        s, env = self.session, self.envelope
        if self._gone:
            if qid:
                log_info("%s <= <%s> H=(%s) %s P=%s S=%d for %s: client gone before the "
                         "250 reply", qid, env.mail_from, s.host_name, self._who(),
                         protocol_name(s, env).lower(), size,
                         " ".join(f"<{r.address}>" for r in env.recipients))  # fmt: skip
            return
        self.proto.respond(reply)
        if reply[0] == "2":
            metrics.accept_seconds.observe(time.perf_counter() - started)
            metrics.messages.labels("accepted").inc()
            metrics.received_bytes.inc(size)
            s.messages += 1
            log_info(
                "%s <= <%s> H=(%s) %s P=%s S=%d for %s",
                qid or "-", env.mail_from, s.host_name, self._who(),
                protocol_name(s, env).lower(), size,
                " ".join(f"<{r.address}>" for r in env.recipients),
            )  # fmt: skip
        else:
            metrics.messages.labels(f"{reply[:1]}xx").inc()
        self.envelope = Envelope()
