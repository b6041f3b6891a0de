"""``smtpedge serve``: run the server as a daemon in the foreground.

The parent locks the data directory (a second server on it is refused,
naming the PID that holds it), cleans up after any crash (orphaned spool
files), binds the listening sockets, then serves itself (``workers = 1``) or
forks workers that share the sockets. When every worker listens it logs
``smtpedge ready``. A worker that dies is restarted at once; the supervisor
first clears its share of the per-client counts and its partial uploads.
SIGTERM or SIGINT (or ``smtpedge ctl drain``) drains it: health checks
from a proxy fail first (``drain_health_checks``), then new sessions get 421,
sessions in progress get ``drain_timeout`` to finish, the queue runner
finishes the deliveries under way, and it exits. With ``metrics_address`` set
it serves Prometheus metrics, summed over every worker.

SIGHUP (or ``smtpedge ctl reload``) reads the configuration file again and,
when it is good, applies it without dropping a connection: host lists,
limits, the banner, certificates and OCSP files, routers, transports and
retry rules. A bad file is refused with the option's name and the running
configuration stays. The options in ``RESTART_OPTIONS`` (sockets, the data
directory, workers, ...) need a restart: a reload says so and keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import resource
import select
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from smtpedge import metrics
from smtpedge.config import Config
from smtpedge.log import configure, logger
from smtpedge.log import flush as flush_log
from smtpedge.queue import DataDirectoryBusy, DataDirectoryLock, Queue, incoming_directory
from smtpedge.receiving.connection import describe_error
from smtpedge.receiving.hosttable import HostTable, SharedHostTable

__all__ = ["RESTART_OPTIONS", "bind", "run"]

#: Options a reload cannot change in a running server.
RESTART_OPTIONS = (
    "local_interfaces", "daemon_smtp_ports", "spool_directory", "workers", "event_loop",
    "log_file_path", "log_format", "metrics_address", "limits_store", "limits_store_timeout",
    "spool_inline_max", "queue_commit_batch", "queue_only",
)  # fmt: skip

Loader = Callable[[], Config]


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
    from smtpedge.receiving.server import server_tls
    from smtpedge.tls.server import TLSConfigError

    try:
        server_tls(config, config.hostname)
    except TLSConfigError as exc:
        raise SystemExit(f"smtpedge: option tls_certificate / tls_privatekey: {exc}") from None


def _check_delivery(config: Config) -> None:
    """Build the routers and transports once, so that a bad one stops
    start-up with a message naming the option."""
    from smtpedge.config import ConfigError
    from smtpedge.delivery import Delivery

    try:
        Delivery(config)
    except ConfigError as exc:
        raise SystemExit(f"smtpedge: {exc}") from None


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


def worker_count(config: Config) -> int:
    """``workers``, with 0 meaning one per CPU this process may run on."""
    if config.workers:
        return config.workers
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 64))


def checked_reload(current: Config, load: Loader) -> Config | None:
    """The configuration read again and checked (certificates, routers and
    transports built once), with the restart-only options kept as they are;
    None, logged with the option's name, when it is refused."""
    from smtpedge.config import ConfigError
    from smtpedge.delivery import Delivery
    from smtpedge.receiving.server import server_tls
    from smtpedge.tls.server import TLSConfigError

    try:
        new = load()
        kept = {
            n: getattr(current, n)
            for n in RESTART_OPTIONS
            if getattr(new, n) != getattr(current, n)
        }
        if kept:
            new = replace(new, **kept)
        server_tls(new, new.hostname)
        Delivery(new)
    except ConfigError as exc:
        logger.error("reload refused: %s; the running configuration stays", exc)
        return None
    except TLSConfigError as exc:
        logger.error("reload refused: option tls_certificate / tls_privatekey: %s; the "
                     "running configuration stays", exc)  # fmt: skip
        return None
    except OSError as exc:
        logger.error("reload refused: cannot read the configuration: %s; the running "
                     "configuration stays", describe_error(exc))  # fmt: skip
        return None
    if kept:
        logger.warning("reload: %s changed; a restart is needed for that, the running "
                       "value%s stay%s", ", ".join(kept), "s" if len(kept) > 1 else "",
                       "" if len(kept) > 1 else "s")  # fmt: skip
    return new


async def _serve(
    config: Config,
    socks: list[socket.socket],
    handler: Any,
    table: HostTable | None,
    ready: Callable[[], None] | None,
    run_queue: bool = True,
    load: Loader | None = None,
    checked: bool = False,
) -> None:
    from smtpedge.delivery import Delivery, QueueRunner
    from smtpedge.receiving.server import Server

    delivery = Delivery(config)
    runner = QueueRunner(config, delivery) if run_queue and not config.queue_only else None
    server = Server(handler, config, sockets=socks, host_table=table,
                    verify_recipient=delivery.verify,
                    on_queued=(lambda qid: runner.wake()) if runner else None)  # fmt: skip
    await server.start()
    stop = asyncio.Event()
    runner_task = asyncio.create_task(runner.run(stop)) if runner else None
    if ready is not None:
        ready()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    pending: set[asyncio.Task[None]] = set()

    def reload() -> None:
        nonlocal delivery
        if load is None or stop.is_set():
            return
        try:
            # A worker's supervisor has checked the file already.
            new = load() if checked else checked_reload(server.config, load)
            if new is None:
                return
            fresh = Delivery(new)
            server.reload(new)
        except Exception as exc:  # the file changed after the supervisor checked it
            logger.error("reload refused: %s; the running configuration stays", exc)
            return
        server.verify_recipient = fresh.verify
        if runner is not None:
            runner.reload(new, fresh)  # closes the old one after its deliveries
        else:
            task = loop.create_task(delivery.close())
            pending.add(task)
            task.add_done_callback(pending.discard)
        delivery = fresh
        logger.info("configuration reloaded")

    loop.add_signal_handler(signal.SIGHUP, reload)
    await stop.wait()
    logger.info("stopping: %d message(s) accepted by this process", server.messages_accepted)
    await server.drain()
    if runner is not None and runner_task is not None:
        await runner_task
        await runner.close()
    else:
        await delivery.close()


def _serve_worker(
    config: Config,
    socks: list[socket.socket],
    handler: Any,
    table: HostTable | None = None,
    ready: Callable[[], None] | None = None,
    run_queue: bool = True,
    load: Loader | None = None,
    checked: bool = False,
) -> None:
    factory = _event_loop_factory(config)
    main = _serve(config, socks, handler, table, ready, run_queue, load, checked)
    if factory is not None:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main)
    else:
        asyncio.run(main)


def run(config: Config, handler: Any = None, load: Loader | None = None) -> int:
    """Run ``smtpedge serve`` until SIGTERM/SIGINT; return the exit status.
    ``load`` reads the configuration again, for SIGHUP."""
    try:
        lock = DataDirectoryLock(config.spool_path)
    except DataDirectoryBusy as exc:
        raise SystemExit(f"smtpedge: {exc}") from None
    except OSError as exc:
        raise SystemExit(
            f"smtpedge: cannot use the data directory {config.spool_path} "
            f"(option spool_directory): {describe_error(exc)}"
        ) from None
    try:
        return _run(config, handler, load)
    finally:
        lock.release()


def _run(config: Config, handler: Any, load: Loader | None) -> int:
    try:
        configure(config.log_path, fmt=config.log_format)
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
    _check_delivery(config)
    _raise_fd_limit()
    socks = bind(config)
    metrics_server = _start_metrics(config)
    loop_name = "uvloop" if _event_loop_factory(config) else "asyncio"
    logger.info(
        "smtpedge starting: %d worker(s), %s, spool %s, %d message(s) queued%s",
        worker_count(config), loop_name, config.spool_path.resolve(), queued,
        f", {orphans} half-written spool file(s) removed" if orphans else "",
    )  # fmt: skip
    try:
        if worker_count(config) == 1:
            _serve_worker(config, socks, handler, ready=lambda: _log_ready(1), load=load)
            logger.info("smtpedge stopped")
            return 0
        return _supervise(config, socks, handler, load)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()


def _start_metrics(config: Config) -> Any:
    """Serve the metrics (from this process: the only worker, or the
    supervisor summing its workers' files); None when they are off."""
    if not config.metrics_address:
        return None
    multiprocess = worker_count(config) > 1
    if multiprocess:
        metrics.prepare_multiprocess(config.spool_path)
    else:
        metrics.enable()
    try:
        server = metrics.serve(config.metrics_address, config.spool_path, multiprocess=multiprocess)
    except OSError as exc:
        raise SystemExit(
            f"smtpedge: option metrics_address: cannot listen on {config.metrics_address}: "
            f"{exc.strerror}"
        ) from None
    logger.info("metrics on http://%s:%d/metrics", *metrics.split_address(config.metrics_address))
    return server


def _log_ready(workers: int) -> None:
    logger.info("smtpedge ready: %d worker(s) accepting connections", workers)


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to send this worker SIGTERM when the supervisor dies
    (Linux PR_SET_PDEATHSIG), so no orphaned worker goes on holding sockets."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _remove_uploads(config: Config, pid: int) -> int:
    """Remove a dead worker's partial uploads from spool/incoming (their names
    start with its session IDs, ``<pid in hex>.``); return how many."""
    removed = 0
    for path in incoming_directory(config.spool_path).glob(f"{pid:x}.*"):
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def _supervise(
    config: Config, socks: list[socket.socket], handler: Any, load: Loader | None
) -> int:
    children: dict[int, int] = {}
    stopping = False
    # Per-client connection counts and rates, shared by every worker.
    table = SharedHostTable(workers=worker_count(config))
    parent = os.getpid()
    ready_r, ready_w = os.pipe()
    wake_r, wake_w = os.pipe()
    for fd in (ready_r, wake_r, wake_w):
        os.set_blocking(fd, False)

    def spawn(slot: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
            for fd in (ready_r, wake_r, wake_w):
                os.close(fd)
            _die_with_parent(parent)
            table.worker = slot
            if config.metrics_address:
                metrics.enable()

            def ready() -> None:
                os.write(ready_w, b"%d\n" % os.getpid())

            code = 0
            try:
                # The first worker runs the queue; the others only receive.
                _serve_worker(config, socks, handler, table, ready, run_queue=slot == 0,
                              load=load, checked=True)  # fmt: skip
            except BaseException as exc:  # the worker must never return into the parent's code
                logger.error("worker %d failed: %r", os.getpid(), exc)
                code = 1
            finally:
                flush_log()
                os._exit(code)
        children[pid] = slot

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    reloads = 0

    def on_hangup(signum: int, frame: object) -> None:
        nonlocal reloads
        reloads += 1  # handled in the loop below, not inside the signal handler

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.set_wakeup_fd(wake_w)
    for slot in range(worker_count(config)):
        spawn(slot)
    ready: set[int] = set()  # workers that listen
    pending = b""
    announced = False
    while children:
        with contextlib.suppress(InterruptedError):
            select.select([ready_r, wake_r], [], [], 5.0)
        with contextlib.suppress(BlockingIOError):
            pending += os.read(ready_r, 4096)
            *done, pending = pending.split(b"\n")
            ready.update(int(pid) for pid in done)
        with contextlib.suppress(BlockingIOError):
            os.read(wake_r, 1024)
        if reloads and not stopping:
            reloads = 0
            new = checked_reload(config, load) if load is not None else None
            if new is not None:
                config = new  # for workers started from now on, too
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGHUP)
        if not announced and children and set(children) <= ready:
            announced = True  # again after each restart, once the new worker listens
            _log_ready(len(children))
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            slot = children.pop(pid, -1)
            ready.discard(pid)
            if slot < 0:
                continue
            # Its connections are gone: clear its counts and partial uploads.
            table.forget_worker(slot)
            metrics.mark_dead(pid)
            uploads = _remove_uploads(config, pid)
            if stopping:
                continue
            logger.error(
                "worker %d exited (%s); restarting it%s", pid, _describe_status(status),
                f", {uploads} partial upload(s) removed" if uploads else "",
            )  # fmt: skip
            time.sleep(0.5)  # no tight loop if a worker dies at once, every time
            spawn(slot)
            announced = False
    signal.set_wakeup_fd(-1)
    for fd in (ready_r, ready_w, wake_r, wake_w):
        os.close(fd)
    for s in socks:
        s.close()
    logger.info("smtpedge stopped")
    return 0


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by {name}"
    return f"status {os.waitstatus_to_exitcode(status)}"


def main_error(message: str) -> int:
    print(f"smtpedge: {message}", file=sys.stderr)
    return 2
