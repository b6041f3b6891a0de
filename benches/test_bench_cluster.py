"""The cost of running as a cluster, in one run: per-client limits counted
in Redis against the shared-memory table (a new connection per message, so
every message pays one admission and one release), and three nodes behind
haproxy against one node behind the same haproxy.

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

from procs import Proc, cpu_seconds, free_port, run_source, smtpedge, tool

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from redislab import RedisServer  # tests/redislab.py

MESSAGES = int(os.environ.get("BENCH_MESSAGES", "5000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
LIMITS = {"smtp_accept_max_per_host": 1000, "smtp_connect_ratelimit": "1000000 / 1m / per_conn"}


@pytest.fixture
def bench_tmp() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        yield Path(d)


def _node(tmp: Path, name: str, **options: Any) -> Proc:
    (tmp / name).mkdir()
    return smtpedge(tmp / name, event_loop="asyncio", queue_only=True, **options)


@pytest.mark.parametrize("store", ["no-limits", "table", "redis"])
def test_limits_per_connection(benchmark: Any, bench_tmp: Path, store: str) -> None:
    redis = RedisServer(bench_tmp / "redis") if store == "redis" else None
    options: dict[str, Any] = {} if store == "no-limits" else dict(LIMITS)
    if redis is not None:
        options["limits_store"] = redis.url
    if store == "no-limits":
        options.update(smtp_accept_max_per_host=0)
    edge = _node(bench_tmp, "node", **options)
    try:
        pids = [edge.proc.pid]
        cpu0 = cpu_seconds(pids)
        benchmark.group = "limits per connection"
        benchmark.extra_info["messages"] = MESSAGES
        benchmark.pedantic(run_source, args=(edge.port, MESSAGES, False), rounds=ROUNDS,
                           iterations=1)  # fmt: skip
        cpu = cpu_seconds(pids) - cpu0
        benchmark.extra_info["server_cpu_us_per_message"] = cpu / (MESSAGES * ROUNDS) * 1e6
    finally:
        edge.stop()
        if redis is not None:
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


@pytest.mark.parametrize("nodes", [1, 3], ids=["one-node", "three-nodes"])
def test_nodes_behind_haproxy(benchmark: Any, bench_tmp: Path, nodes: int) -> None:
    redis = RedisServer(bench_tmp / "redis")
    edges = [_node(bench_tmp, f"node{i}", hosts_proxy=["127.0.0.1"], limits_store=redis.url,
                   **LIMITS) for i in range(nodes)]  # fmt: skip
    hp = _haproxy(bench_tmp, [("127.0.0.1", e.port) for e in edges])
    try:
        benchmark.group = "cluster behind haproxy"
        benchmark.extra_info["messages"] = MESSAGES
        benchmark.pedantic(run_source, args=(hp.port, MESSAGES, False), rounds=ROUNDS,
                           iterations=1)  # fmt: skip
    finally:
        hp.stop()
        for e in edges:
            e.stop()
        redis.stop()
