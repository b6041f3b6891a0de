"""``smtpedge serve``: run the server as a daemon in the foreground.

The parent binds the listening sockets, cleans up after any crash (orphaned
spool files), then serves itself (``workers = 1``) or forks workers that share
the sockets, restarting any that die. SIGTERM or SIGINT stops it gracefully:
no new connections, sessions get a few seconds to finish, then 421.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import sqlite3
import sys
import time
from typing import Any

from smtpedge.config import Config
from smtpedge.hosttable import HostTable, SharedHostTable
from smtpedge.log import configure, logger
from smtpedge.queue import Queue

__all__ = ["bind", "run"]


def bind(config: Config) -> list[socket.socket]:
    socks = []
    for host in config.local_interfaces:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for port in config.daemon_smtp_ports:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                s.bind((host, port))
            except OSError as exc:
                s.close()
                raise SystemExit(
                    f"smtpedge: cannot listen on [{host}]:{port}: {exc.strerror}"
                ) from None
            s.listen(4096)
            s.setblocking(False)
            socks.append(s)
    return socks


def _check_tls(config: Config) -> None:
    """Load the certificates once before any worker starts (making the
    self-signed pair if none is configured), so a bad pair stops start-up
    with a clear message and workers never race to create files."""
    from smtpedge.server import server_tls
    from smtpedge.tls.server import TLSConfigError

    try:
        server_tls(config, config.hostname)
    except TLSConfigError as exc:
        raise SystemExit(f"smtpedge: option tls_certificate / tls_privatekey: {exc}") from None


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _event_loop_factory(config: Config) -> Any:
    if config.event_loop in ("auto", "uvloop"):
        try:
            import uvloop  # type: ignore[import-not-found, unused-ignore]
        except ImportError:
            if config.event_loop == "uvloop":
                raise SystemExit(
                    "smtpedge: event_loop = 'uvloop' but uvloop is not installed"
                ) from None
            return None
        return uvloop.new_event_loop
    return None


async def _serve(
    config: Config, socks: list[socket.socket], handler: Any, table: HostTable | None
) -> None:
    from smtpedge.server import Server

    server = Server(handler, config, sockets=socks, host_table=table)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    logger.info("stopping: %d message(s) accepted by this process", server.messages_accepted)
    await server.stop()


def _serve_worker(
    config: Config, socks: list[socket.socket], handler: Any, table: HostTable | None = None
) -> None:
    factory = _event_loop_factory(config)
    if factory is not None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(_serve(config, socks, handler, table))
    else:
        asyncio.run(_serve(config, socks, handler, table))


def run(config: Config, handler: Any = None) -> int:
    """Run ``smtpedge serve`` until SIGTERM/SIGINT; return the exit status."""
    try:
        config.spool_path.mkdir(parents=True, exist_ok=True)
        configure(config.log_path)
        q = Queue(config.spool_path, inline_max=config.spool_inline_max)
        orphans = q.recover()
        queued = len(q)
        q.close()
    except (OSError, sqlite3.Error) as exc:
        raise SystemExit(
            f"smtpedge: cannot use the data directory {config.spool_path} "
            f"(option spool_directory / log_file_path): {exc}"
        ) from None
    _check_tls(config)
    _raise_fd_limit()
    socks = bind(config)
    loop_name = "uvloop" if _event_loop_factory(config) else "asyncio"
    logger.info(
        "smtpedge starting: %d worker(s), %s, spool %s, %d message(s) queued%s",
        config.workers, loop_name, config.spool_path.resolve(), queued,
        f", {orphans} half-written spool file(s) removed" if orphans else "",
    )  # fmt: skip
    if config.workers == 1:
        _serve_worker(config, socks, handler)
        return 0
    return _supervise(config, socks, handler)


def _supervise(config: Config, socks: list[socket.socket], handler: Any) -> int:
    children: dict[int, int] = {}
    stopping = False
    # Per-client connection counts and rates, shared by every worker.
    table = SharedHostTable()

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = 0
            try:
                _serve_worker(config, socks, handler, table)
            except BaseException as exc:  # the worker must never return into the parent's code
                logger.error("worker %d failed: %r", os.getpid(), exc)
                code = 1
            finally:
                os._exit(code)
        children[pid] = slot

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for slot in range(config.workers):
        spawn(slot)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        slot = children.pop(pid, -1)
        if slot >= 0 and not stopping:
            logger.error("worker %d exited (status %d); restarting it", pid, status)
            table.reset_counts()
            time.sleep(0.5)
            spawn(slot)
    for s in socks:
        s.close()
    logger.info("smtpedge stopped")
    return 0


def main_error(message: str) -> int:
    print(f"smtpedge: {message}", file=sys.stderr)
    return 2
