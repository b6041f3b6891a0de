"""Prometheus metrics (``prometheus_client``).

Off by default: until ``enable()`` runs, every metric here is a stand-in
whose methods do nothing, so the hot paths pay one call. ``smtpedge serve``
enables them when ``metrics_address`` is set and serves them there; a program
that embeds ``smtpedge.Server`` can call ``enable()`` itself and expose
``prometheus_client.REGISTRY`` as it likes.

With several workers every worker writes its figures to files in
``<spool>/metrics`` (prometheus_client's multiprocess mode) and the
supervisor serves their sum in one scrape; counters of a worker that died
stay in the sum. Queue size and the age of the oldest message are read from
the queue at scrape time.

The metrics (all prefixed ``smtpedge_``) are listed in docs/operations.md.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["enable", "enabled", "prepare_multiprocess", "proxy_reason", "serve"]


class _Off:
    """A metric while metrics are off: every method does nothing."""

    def labels(self, *args: Any, **kwargs: Any) -> _Off:
        return self

    def inc(self, amount: float = 1) -> None:
        pass

    def observe(self, amount: float) -> None:
        pass

    @contextlib.contextmanager
    def time(self) -> Iterator[None]:
        yield


_OFF = _Off()

# Receiving side.
connections: Any = _OFF  # outcome
proxy_headers: Any = _OFF  # version, command
proxy_rejected: Any = _OFF  # reason
tls_handshakes: Any = _OFF  # outcome
ocsp_staples: Any = _OFF  # outcome
messages: Any = _OFF  # result: accepted, or the reply class of a refusal (4xx, 5xx)
received_bytes: Any = _OFF
group_commits: Any = _OFF
group_commit_size: Any = _OFF
accept_seconds: Any = _OFF
limits_store_errors: Any = _OFF
# Sending side.
deliveries: Any = _OFF  # transport, outcome
dsn_reports: Any = _OFF  # action
dane: Any = _OFF  # result (tls_out_dane)
ocsp_out: Any = _OFF  # result (tls_out_ocsp)

_enabled = False


def enabled() -> bool:
    return _enabled


def enable() -> None:
    """Create the metrics (in this process's registry, or in the multiprocess
    files when ``PROMETHEUS_MULTIPROC_DIR`` is set). Idempotent."""
    global _enabled, connections, proxy_headers, proxy_rejected, tls_handshakes
    global ocsp_staples, messages, received_bytes, group_commits, group_commit_size
    global accept_seconds, limits_store_errors, deliveries, dsn_reports, dane, ocsp_out
    if _enabled:
        return
    from prometheus_client import Counter, Histogram

    connections = Counter(
        "smtpedge_connections", "SMTP connections by outcome: accepted (greeted), "
        "refused by a limit (accept_max, per_host, rate, store), timeout, health_check",
        ["outcome"],
    )  # fmt: skip
    proxy_headers = Counter("smtpedge_proxy_headers", "PROXY headers accepted",
                            ["version", "command"])  # fmt: skip
    proxy_rejected = Counter("smtpedge_proxy_rejected", "PROXY headers refused, by reason",
                             ["reason"])  # fmt: skip
    tls_handshakes = Counter("smtpedge_tls_handshakes", "Inbound STARTTLS handshakes by outcome",
                             ["outcome"])  # fmt: skip
    ocsp_staples = Counter("smtpedge_ocsp_staples", "Inbound TLS sessions by OCSP staple sent",
                           ["outcome"])  # fmt: skip
    messages = Counter("smtpedge_messages", "Messages at end of data: accepted, or refused "
                       "by reply class", ["result"])  # fmt: skip
    received_bytes = Counter("smtpedge_received_bytes", "Bytes of message data accepted")
    group_commits = Counter("smtpedge_group_commits", "Queue group commits (fsyncs)")
    group_commit_size = Histogram(
        "smtpedge_group_commit_messages", "Messages made durable per group commit",
        buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    )  # fmt: skip
    accept_seconds = Histogram(
        "smtpedge_accept_seconds", "Time from the end of a message's data to its 250",
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    )  # fmt: skip
    limits_store_errors = Counter("smtpedge_limits_store_errors",
                                  "Calls to the limits store that failed")  # fmt: skip
    deliveries = Counter("smtpedge_deliveries", "Delivery attempts per recipient by outcome",
                         ["transport", "outcome"])  # fmt: skip
    dsn_reports = Counter("smtpedge_dsn_reports", "Delivery status notifications sent",
                          ["action"])  # fmt: skip
    dane = Counter("smtpedge_dane", "Outbound connections by DANE result (tls_out_dane)",
                   ["result"])  # fmt: skip
    ocsp_out = Counter("smtpedge_ocsp_out", "Outbound TLS connections by OCSP result "
                       "(tls_out_ocsp)", ["result"])  # fmt: skip
    _enabled = True


_DIGITS = re.compile(r"\d+")


def proxy_reason(reason: str) -> str:
    """A PROXY refusal reason as a label value (numbers folded, so the set of
    values stays small)."""
    return _DIGITS.sub("N", reason)[:60]


def prepare_multiprocess(spool: Path) -> Path:
    """Point prometheus_client's multiprocess mode at an empty
    ``<spool>/metrics`` (for the workers to come); call before anything
    imports prometheus_client."""
    path = spool / "metrics"
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


class _QueueCollector:
    """Queue size and the age of the oldest message, read at scrape time."""

    def __init__(self, spool: Path) -> None:
        self.db = spool / "queue.db"

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        size = GaugeMetricFamily("smtpedge_queue_messages", "Messages in the queue")
        oldest = GaugeMetricFamily(
            "smtpedge_queue_oldest_seconds", "Age of the oldest message in the queue (0: empty)"
        )
        count, first = 0, None
        with contextlib.suppress(sqlite3.Error):
            con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1.0)
            try:
                (count,) = con.execute("SELECT count(*) FROM messages").fetchone()
                # Queue IDs sort by arrival: the primary key finds the oldest.
                row = con.execute("SELECT arrival FROM messages ORDER BY id LIMIT 1").fetchone()
                first = row[0] if row else None
            finally:
                con.close()
        size.add_metric([], count)
        oldest.add_metric([], max(time.time() - first, 0.0) if first else 0.0)
        yield size
        yield oldest


def serve(address: str, spool: Path, *, multiprocess: bool) -> Any:
    """Serve the metrics over HTTP on ``address`` (host:port) from a thread;
    return the server (``shutdown()`` stops it)."""
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    host, port = split_address(address)
    if multiprocess:
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = REGISTRY
    with contextlib.suppress(ValueError):  # a second serve() in one process
        registry.register(_QueueCollector(spool))
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


def split_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or a bare ``port`` (on 127.0.0.1)."""
    text = address.strip()
    if text.isdigit():
        return "127.0.0.1", int(text)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bad address {address!r} (use e.g. 127.0.0.1:9309)")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def mark_dead(pid: int) -> None:
    """A worker died (multiprocess mode): drop its live gauges."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess as mp

        with contextlib.suppress(Exception):
            mp.mark_process_dead(pid)  # type: ignore[no-untyped-call]
