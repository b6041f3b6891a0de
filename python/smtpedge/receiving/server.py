"""The asyncio SMTP server: a thin adapter between sockets, the sans-I/O
protocol (``smtpedge.protocol``), handler hooks and the durable queue.

    server = smtpedge.Server(handler, Config(daemon_smtp_ports=(2525,)))
    await server.start()
    await server.serve_forever()      # or: await server.stop()

Each connection is an ``asyncio.Protocol`` that does no work while idle (no
task, one timer), so tens of thousands of idle clients are cheap. A task is
started only while a handler hook or a queue commit is awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from smtpedge import __version__
from smtpedge.config import Config
from smtpedge.hostlist import HostList
from smtpedge.log import logger
from smtpedge.protocol.server import Limits, Offer
from smtpedge.queue import DataDirectoryLock, GroupCommitter, Queue, new_queue_id
from smtpedge.queue.store import MessageRecord, make_record
from smtpedge.receiving.connection import Connection, fmt_address, sock_address
from smtpedge.receiving.handlers import check_handler
from smtpedge.receiving.hosttable import HostTable
from smtpedge.receiving.limits import ConnectionLimits, RateLimiter
from smtpedge.receiving.received import protocol_name, received_header
from smtpedge.receiving.relay import RelayPolicy
from smtpedge.receiving.session import Envelope, Session
from smtpedge.tls.server import CertificatePair, ServerTLS, make_self_signed

__all__ = ["Server"]


class Server:
    """An SMTP server. ``handler`` is an object with optional ``handle_<VERB>``
    coroutines (see ``smtpedge.receiving.handlers``); hooks are checked here, so a
    misspelt hook fails at construction. Worker processes pass one shared
    ``host_table`` so per-client limits count across all of them."""

    def __init__(
        self,
        handler: Any = None,
        config: Config | None = None,
        *,
        sockets: list[socket.socket] | None = None,
        host_table: HostTable | None = None,
        verify_recipient: Callable[[str, str], Awaitable[str | None]] | None = None,
        on_queued: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config or Config()
        # Checks a recipient in a local domain at RCPT time (address, sender):
        # None to take it, else the reply (the routers in verify mode).
        self.verify_recipient = verify_recipient
        self.on_queued = on_queued
        self.handler = handler
        self.hooks = check_handler(handler)
        cfg = self.config
        self._apply(cfg)
        store = None
        if cfg.limits_store and (cfg.smtp_accept_max_per_host or cfg.smtp_connect_ratelimit):
            from smtpedge.receiving.limitstore import RedisLimits

            store = RedisLimits(
                cfg.limits_store,
                max_per_host=cfg.smtp_accept_max_per_host,
                ratelimit=cfg.smtp_connect_ratelimit,
                lease=cfg.limits_store_lease,
                timeout=cfg.limits_store_timeout,
                fail_open=cfg.limits_store_fail == "open",
            )
        self.connections = ConnectionLimits(
            cfg.smtp_accept_max,
            cfg.smtp_accept_max_per_host,
            cfg.smtp_connect_ratelimit,
            host_table,
            store,
        )
        # Drain (``drain``): health checks fail first, then new sessions get
        # 421 (``stopping``) until the ones in progress are done.
        self.draining = False
        self.stopping = False
        self.last_health_check = 0.0
        self.health_check_interval = 0.0  # between the last two checks
        self._sockets = sockets
        self._servers: list[asyncio.Server] = []
        self.active: set[Connection] = set()
        self.read_buffer = memoryview(bytearray(256 * 1024))
        self._committer: GroupCommitter | None = None
        self.messages_accepted = 0
        self.tls: ServerTLS | None = None
        self._lock: DataDirectoryLock | None = None

    def _apply(self, cfg: Config) -> None:
        """What a new configuration changes for the connections to come."""
        self.config = cfg
        self.hostname = cfg.hostname
        self.limits = Limits(
            hostname=self.hostname,
            max_line=cfg.smtp_max_line_length,
            max_errors=cfg.smtp_max_synprot_errors,
            max_unknown=cfg.smtp_max_unknown_commands,
            max_recipients=cfg.recipients_max,
            max_refused_recipients=cfg.smtp_max_refused_recipients,
            max_messages=cfg.smtp_accept_max_per_connection,
            bare_newline=cfg.bare_newline,
            enforce_sync=cfg.smtp_enforce_sync,
        )
        self.relay = RelayPolicy(cfg)
        self.needs_name = any(
            isinstance(getattr(cfg, n), HostList) and getattr(cfg, n).needs_name
            for n in (
                "hosts_proxy", "dsn_advertise_hosts", "pipelining_advertise_hosts",
                "chunking_advertise_hosts", "smtputf8_advertise_hosts", "vrfy_hosts",
                "tls_advertise_hosts", "tls_required_hosts", "relay_from_hosts",
                "smtp_accept_max_nonmail_hosts",
            )
        )  # fmt: skip
        self.banner = cfg.smtp_banner.format(hostname=self.hostname, version=__version__)
        self._offers: dict[tuple[str, str | None], Offer] = {}

    def reload(self, config: Config) -> None:
        """Use ``config`` for new connections (sessions under way keep their
        limits): host lists, limits, banner, certificates and OCSP files are
        read again. Raises TLSConfigError (and changes nothing) for an unusable
        certificate. The options in ``RESTART_OPTIONS`` keep their old values."""
        tls = server_tls(config, config.hostname) if self._servers else self.tls
        self._apply(config)
        self.tls = tls
        conns = self.connections
        conns.max_total = config.smtp_accept_max
        conns.max_per_host = config.smtp_accept_max_per_host
        rl = config.smtp_connect_ratelimit
        conns.ratelimiter = RateLimiter(rl) if rl else None
        if conns.store is not None:
            conns.store.max_per_host = config.smtp_accept_max_per_host
            conns.store.ratelimit = rl
            conns.store.lease = config.limits_store_lease
            conns.store.fail_open = config.limits_store_fail == "open"

    # -- lifecycle ------------------------------------------------------------------

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) pairs the server listens on."""
        out = []
        for srv in self._servers:
            for sock in srv.sockets:
                out.append(sock_address(sock.getsockname()))
        return out

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    async def start(self) -> None:
        """Open the queue and start listening. A start that fails (a port in
        use, say) leaves nothing held: no lock, no socket, no committer."""
        try:
            await self._start()
        except BaseException:
            for srv in self._servers:
                srv.close()
            self._servers.clear()
            if self._committer is not None:
                self._committer.close()
                self._committer = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None
            raise

    async def _start(self) -> None:
        cfg = self.config
        cfg.spool_path.mkdir(parents=True, exist_ok=True)
        if self._sockets is None:
            # A server on its own (not a worker of smtpedge serve, whose parent
            # did this before forking): lock the directory, then clear what a
            # crash left half-written.
            self._lock = DataDirectoryLock(cfg.spool_path)
            q = self.open_queue()
            q.recover()
            q.close()
        self.tls = server_tls(cfg, self.hostname)
        self._committer = GroupCommitter(
            cfg.spool_path, inline_max=cfg.spool_inline_max, batch_max=cfg.queue_commit_batch
        )
        loop = asyncio.get_running_loop()
        if self._sockets is not None:
            for sock in self._sockets:
                self._servers.append(
                    await loop.create_server(lambda: Connection(self), sock=sock, backlog=4096)
                )
        else:
            for host in cfg.local_interfaces:
                for port in cfg.daemon_smtp_ports:
                    self._servers.append(
                        await loop.create_server(
                            lambda: Connection(self), host, port, backlog=4096,
                            reuse_address=True,
                        )
                    )  # fmt: skip
        for srv in self._servers:
            for sock in srv.sockets:
                logger.info("listening on %s", fmt_address(sock_address(sock.getsockname())))

    async def serve_forever(self) -> None:
        if not self._servers:
            await self.start()
        try:
            await asyncio.gather(*(srv.serve_forever() for srv in self._servers))
        except asyncio.CancelledError:
            pass

    async def drain(self, timeout: float | None = None, checks: int | None = None) -> None:
        """Leave a cluster gracefully: fail ``checks`` health checks (PROXY
        LOCAL connections, as HAProxy sends them) so the proxy marks this node
        down, skipped when none came in the last minute; then refuse new
        sessions with 421, give the sessions in progress ``timeout`` seconds to
        end their transactions, send 421 to the rest and stop."""
        cfg = self.config
        timeout = cfg.drain_timeout if timeout is None else timeout
        checks = cfg.drain_health_checks if checks is None else checks
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self.draining = True
        behind_proxy = self.last_health_check and loop.time() - self.last_health_check < 60
        if checks and behind_proxy:
            logger.info("draining: failing health checks until %d have been refused", checks)
            while self.connections.checks_refused() < checks and loop.time() < deadline:
                # The proxy stopped checking (it is gone, or has this node down).
                quiet = loop.time() - self.last_health_check
                if quiet > max(3 * self.health_check_interval, 1.0):
                    break
                await asyncio.sleep(0.05)
        logger.info("draining: refusing new sessions; %d session(s) in progress",
                    len(self.active))  # fmt: skip
        self.stopping = True
        await self.stop(grace=max(deadline - loop.time(), 0.0), listen=True)

    async def stop(self, grace: float = 5.0, *, listen: bool = False) -> None:
        """Stop listening (with ``listen``, go on answering new connections
        with 421 meanwhile), let sessions finish their transactions for
        ``grace`` seconds, then send 421 to the rest; every message already
        acknowledged is on disk."""
        self.stopping = True
        if not listen:
            for srv in self._servers:
                srv.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.active and loop.time() < deadline:
            if all(c.between_transactions for c in self.active):
                break
            await asyncio.sleep(0.05)
        for srv in self._servers:
            srv.close()
        for conn in list(self.active):
            conn.shutdown()
        for srv in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 1.0)
        self._servers.clear()
        if self._committer is not None:
            committer, self._committer = self._committer, None
            await asyncio.get_running_loop().run_in_executor(None, committer.close)
            if committer.batches:
                logger.info("queue: %d message(s) made durable in %d group commit(s)",
                            committer.committed, committer.batches)  # fmt: skip
        if self.connections.store is not None:
            await self.connections.store.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- services for connections and handlers ---------------------------------------

    def offer_for(self, ip: str, name: str | None) -> Offer:
        """What this client is offered, from the host lists (cached per client)."""
        offer = self._offers.get((ip, name))
        if offer is None:
            if len(self._offers) > 10_000:
                self._offers.clear()
            offer = self._offers[(ip, name)] = self._make_offer(ip, name)
        return offer

    def _make_offer(self, ip: str, name: str | None) -> Offer:
        cfg = self.config

        def has(hl: HostList) -> bool:
            return hl.match(ip, hostname=name)

        return Offer(
            size_limit=cfg.message_size_limit,
            pipelining=has(cfg.pipelining_advertise_hosts),
            eightbitmime=cfg.accept_8bitmime,
            smtputf8=has(cfg.smtputf8_advertise_hosts),
            chunking=has(cfg.chunking_advertise_hosts),
            dsn=has(cfg.dsn_advertise_hosts),
            starttls=self.tls is not None and has(cfg.tls_advertise_hosts),
            require_tls=has(cfg.tls_required_hosts),
            vrfy=has(cfg.vrfy_hosts),
            max_nonmail=(
                cfg.smtp_accept_max_nonmail if has(cfg.smtp_accept_max_nonmail_hosts) else 0
            ),
        )

    async def queue_message(self, session: Session, envelope: Envelope) -> str:
        """Add a Received header and store the message durably; return its queue ID
        once it is on stable storage."""
        qid, _ = await self.store_message(session, envelope)
        return qid

    @property
    def incoming(self) -> Path:
        """Where connections write big messages as they arrive."""
        if self._committer is None:
            raise RuntimeError("the server is not running")
        return self._committer.incoming

    async def store_message(self, session: Session, envelope: Envelope) -> tuple[str, int]:
        """``queue_message``, also returning the size stored (the Received
        header counted, as Exim counts it)."""
        committer = self._running_committer()
        record = self._record(session, envelope)
        await committer.commit(record)
        self._queued(record.id)
        return record.id, record.size

    def submit_message(
        self,
        session: Session,
        envelope: Envelope,
        done: Callable[[str, int, BaseException | None], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """``store_message`` without a task: ``done(queue_id, size, error)``
        runs in ``loop`` once the message is durable (``error`` None) or was
        not stored."""
        committer = self._running_committer()
        record = self._record(session, envelope)

        def committed(error: BaseException | None) -> None:
            if error is None:
                self._queued(record.id)
            done(record.id, record.size, error)

        committer.submit(record, committed, loop)

    def _running_committer(self) -> GroupCommitter:
        if self._committer is None:
            raise RuntimeError("the server is not running")
        return self._committer

    def _record(self, session: Session, envelope: Envelope) -> MessageRecord:
        """The queue record of a message: its ID, Received header, client facts."""
        assert envelope.mail_from is not None
        assert envelope.content is not None or envelope.content_file is not None
        qid = new_queue_id()
        header = received_header(session, envelope, self.hostname, qid, __version__)
        client = {
            "address": session.peer[0],
            "port": session.peer[1],
            "helo": session.host_name,
            "protocol": protocol_name(session, envelope),
            "proxy": list(session.proxy_peer) if session.proxy_peer else None,
            "session": session.id,
        }
        file = envelope.content_file
        return make_record(
            envelope.mail_from, envelope.recipients,
            b"" if file is not None else envelope.content or b"",
            envelope.mail_params, envelope.raw_mail_params, client, qid, header, file,
        )  # fmt: skip

    def _queued(self, queue_id: str) -> None:
        self.messages_accepted += 1
        if self.on_queued is not None:
            self.on_queued(queue_id)

    def open_queue(self) -> Queue:
        return Queue(self.config.spool_path, inline_max=self.config.spool_inline_max)


def server_tls(config: Config, hostname: str) -> ServerTLS | None:
    """TLS from tls_certificate/tls_privatekey, or a self-signed pair for
    ``hostname`` (made once, in the data directory); None when STARTTLS is
    offered to nobody. Raises TLSConfigError for an unusable pair."""
    if not config.tls_advertise_hosts:
        return None
    if config.tls_certificate:
        ocsp_files = config.tls_ocsp_file or ("",) * len(config.tls_certificate)
        files = zip(config.tls_certificate, config.tls_privatekey, ocsp_files, strict=True)
        pairs = [CertificatePair(c, k, o) for c, k, o in files]
    else:
        pairs = make_self_signed(config.spool_path / "tls", hostname)
    return ServerTLS(pairs)
