"""The cost of running as a cluster, in one run: per-client limits counted
in Redis against the shared-memory table (a new connection per message, so
every message pays one admission and one release), and three nodes behind
haproxy against one node, each set behind its own haproxy, run in turns.

On a 2-core machine three nodes cannot be faster than one (they share the
same two cores with haproxy and smtp-source), so the second ratio measures
the overhead of spreading the load, not the capacity a cluster of machines
gains.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procs import Proc, free_port, interleaved, smtpedge, tool

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from redislab import RedisServer  # tests/redislab.py

LIMITS = {"smtp_accept_max_per_host": 1000, "smtp_connect_ratelimit": "1000000 / 1m / per_conn"}


@pytest.fixture
def bench_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        yield Path(d)


def _node(tmp: Path, name: str, **options: Any) -> Proc:
    (tmp / name).mkdir()
    return smtpedge(tmp / name, event_loop="asyncio", queue_only=True, **options)


def test_limits_per_connection(benchmark: Any, bench_tmp: Path) -> None:
    """No per-host limits, the shared-memory table, Redis: one new connection
    per message, so each message pays one admission and one release."""
    redis = RedisServer(bench_tmp / "redis")
    edges = {
        "no-limits": _node(bench_tmp, "none", smtp_accept_max_per_host=0),
        "table": _node(bench_tmp, "table", **LIMITS),
        "redis": _node(bench_tmp, "in-redis", limits_store=redis.url, **LIMITS),
    }
    try:
        targets = {n: (e.port, [e.proc.pid]) for n, e in edges.items()}
        interleaved(benchmark, "limits per connection", targets)
    finally:
        for e in edges.values():
            e.stop()
        redis.stop()


def _haproxy(tmp: Path, targets: list[tuple[str, int]]) -> Proc:
    port = free_port()
    servers = "".join(f"    server n{i} {h}:{p} send-proxy-v2\n"
                      for i, (h, p) in enumerate(targets))  # fmt: skip
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(
        "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 60s\n    timeout server 60s\n"
        f"frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n"
        f"backend b\n    balance leastconn\n{servers}"
    )
    return Proc([tool("haproxy"), "-db", "-f", str(cfg)], port)


def test_nodes_behind_haproxy(benchmark: Any, bench_tmp: Path) -> None:
    """One node and three nodes, each set behind its own haproxy (PROXY v2,
    limits in one Redis)."""
    redis = RedisServer(bench_tmp / "redis")
    procs: list[Proc] = []
    targets: dict[str, tuple[int, list[int]]] = {}
    try:
        for name, count in (("one-node", 1), ("three-nodes", 3)):
            edges = [_node(bench_tmp, f"{name}-{i}", hosts_proxy=["127.0.0.1"],
                           limits_store=redis.url, **LIMITS) for i in range(count)]  # fmt: skip
            procs += edges
            hp = _haproxy(bench_tmp / f"{name}-0", [("127.0.0.1", e.port) for e in edges])
            procs.append(hp)
            targets[name] = (hp.port, [e.proc.pid for e in edges])
        interleaved(benchmark, "cluster behind haproxy", targets)
    finally:
        for p in reversed(procs):
            p.stop()
        redis.stop()
