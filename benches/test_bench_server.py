"""Server throughput under Postfix's smtp-source, every server in one run:
smtpedge (durable queue; asyncio, uvloop, two workers; through haproxy with
and without PROXY v2), aiosmtpd 1.4.6 writing and fsyncing each message,
aiosmtpd discarding, Postfix's smtpd writing into its own queue (durable,
its queue manager stopped) and Postfix's smtp-sink as the C baseline.

smtp-source sends MESSAGES messages of 2 KB over 20 parallel sessions, either
a new connection per message or reusing connections (-d). Each benchmark's
time is one whole run; ``benches/report.py`` turns it into messages per
second and ratios. Also here: the memory of 10,000 idle connections.
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from procs import HERE, Postfix, Proc, cpu_seconds, free_port, run_source, smtpedge, tool

MESSAGES = int(os.environ.get("BENCH_MESSAGES", "5000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def aiosmtpd(tmp: Path, mode: str) -> Proc:
    port = free_port()
    return Proc([sys.executable, str(HERE / "aiosmtpd_server.py"), str(port), mode, str(tmp)],
                port)  # fmt: skip


def smtp_sink() -> Proc:
    port = free_port()
    return Proc([tool("smtp-sink"), "-u", "nobody", f"127.0.0.1:{port}", "1000"], port)


def haproxy(tmp: Path, target: int, send_proxy: bool) -> Proc:
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    option = " send-proxy-v2" if send_proxy else ""
    cfg.write_text(
        "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 60s\n    timeout server 60s\n"
        f"frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n"
        f"backend b\n    server s 127.0.0.1:{target}{option}\n"
    )
    return Proc([tool("haproxy"), "-db", "-f", str(cfg)], port)


class PostfixProc:
    """Postfix's smtpd and cleanup writing into its own queue, durably; its
    queue manager does not run, so nothing leaves."""

    def __init__(self) -> None:
        # No flow control: with no queue manager to hand out tokens, smtpd
        # would pause in_flow_delay (1s) before each message.
        self.postfix = Postfix(qmgr=False, extra={"in_flow_delay": "0s"})
        self.port = self.postfix.port
        self.proc = self.postfix.proc

    def stop(self) -> None:
        queued = len(self.postfix.queued())
        self.postfix.stop()
        assert queued >= MESSAGES, f"Postfix queued {queued} messages"


def _has_uvloop() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


SERVERS = [
    "smtpedge-durable",
    "smtpedge-durable-uvloop",
    "smtpedge-durable-2-workers",
    "smtpedge-via-haproxy",
    "smtpedge-via-haproxy-proxy-v2",
    "postfix-durable",
    "aiosmtpd-durable",
    "aiosmtpd-discard",
    "smtp-sink",
]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, Path, list[int]]]:
    name: str = request.param
    procs: list[Proc | PostfixProc] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        tmp = Path(d)
        if name.startswith("smtpedge"):
            # Accepting only: the queue runner does not run.
            options: dict[str, Any] = {"event_loop": "asyncio", "queue_only": True}
            if "uvloop" in name:
                if not _has_uvloop():
                    pytest.skip("uvloop is not installed (pip install smtpedge[fast])")
                options["event_loop"] = "uvloop"
            if "2-workers" in name:
                options["workers"] = 2
            if "proxy-v2" in name:
                options["hosts_proxy"] = ["127.0.0.1"]
            edge = smtpedge(tmp, **options)
            procs.append(edge)
            port = edge.port
            if "haproxy" in name:
                hp = haproxy(tmp, edge.port, "proxy-v2" in name)
                procs.append(hp)
                port = hp.port
        elif name.startswith("postfix"):
            procs.append(PostfixProc())
            port = procs[-1].port
        elif name.startswith("aiosmtpd"):
            procs.append(aiosmtpd(tmp, name.split("-")[1]))
            port = procs[-1].port
        else:
            procs.append(smtp_sink())
            port = procs[-1].port
        server_pids = [p.proc.pid for p in procs if "haproxy" not in str(p.proc.args)]
        try:
            yield port, tmp, server_pids
        finally:
            for p in reversed(procs):
                p.stop()


@pytest.mark.parametrize("reuse", [False, True], ids=["new-connections", "reused-connections"])
@pytest.mark.parametrize("server", SERVERS, indirect=True)
def test_smtp_source(benchmark: Any, server: tuple[int, Path, list[int]], reuse: bool) -> None:
    port, _, pids = server
    benchmark.group = f"server, {'reused' if reuse else 'new'} connections"
    benchmark.extra_info["messages"] = MESSAGES
    cpu0 = cpu_seconds(pids)
    benchmark.pedantic(run_source, args=(port, MESSAGES, reuse), rounds=ROUNDS, iterations=1)
    # CPU the server itself (not the client, not haproxy) spent per message.
    cpu = cpu_seconds(pids) - cpu0
    benchmark.extra_info["server_cpu_us_per_message"] = cpu / (MESSAGES * ROUNDS) * 1e6


def _rss_kb(pid: int) -> int:
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


async def _hold_idle(port: int, count: int) -> list[Any]:
    conns = []
    for i in range(count):
        src = f"127.0.{1 + i // 20000}.{1 + (i // 250) % 250}"
        r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
        conns.append((r, w))
    await asyncio.gather(*(r.readline() for r, _ in conns))  # every banner arrived
    return conns


def test_idle_connections_memory(benchmark: Any, tmp_path: Path) -> None:
    count = int(os.environ.get("BENCH_IDLE", "10000"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, count + 1000)), hard))
    edge = smtpedge(tmp_path, event_loop="asyncio")
    try:
        before = _rss_kb(edge.proc.pid)
        loop = asyncio.new_event_loop()
        conns = loop.run_until_complete(_hold_idle(edge.port, count))
        time.sleep(0.5)
        after = _rss_kb(edge.proc.pid)
        for _, w in conns:
            w.close()
        loop.close()
    finally:
        edge.stop()
    benchmark.group = "idle connections"
    benchmark.extra_info.update(
        {"connections": count, "rss_before_mb": before / 1024, "rss_after_mb": after / 1024}
    )
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\n{count} idle connections: RSS {before / 1024:.1f} MB -> {after / 1024:.1f} MB")
    assert after / 1024 < 300, f"{count} idle connections need {after / 1024:.0f} MB"
