"""Accept speed under Postfix's smtp-source, every server in one interleaved
run: smtpedge as ``smtpedge serve`` runs it out of the box (a worker per CPU,
uvloop, its log file) and with one worker (uvloop; asyncio's own loop),
smtpedge behind haproxy (with and without PROXY v2), Postfix's smtpd writing
into its own queue (durable, its queue manager stopped), aiosmtpd 1.4.6
writing and fsyncing each message, aiosmtpd discarding, and Postfix's
smtp-sink as the C baseline that keeps nothing. With ``BENCH_BASELINE`` set
to a directory holding another build of smtpedge (``pip install --no-deps
--target DIR`` of its wheel), that build runs too, as ``smtpedge-baseline``
with its own defaults, so that a change is measured against the code before
it in the same run.

All the servers run at once; each round sends MESSAGES messages of 2 KB over
20 parallel sessions to each in turn, so a busy moment of the shared machine
hits them all alike. One test sends a new connection per message, the other
reuses connections (-d). ``benches/report.py`` turns the medians into
messages per second, ratios and server CPU per message. Also here: the
memory of 10,000 idle connections.
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

from procs import HERE, MESSAGES, Postfix, Proc, free_port, interleaved, smtpedge, tool


def aiosmtpd(tmp: Path, mode: str) -> Proc:
    port = free_port()
    return Proc([sys.executable, str(HERE / "aiosmtpd_server.py"), str(port), mode, str(tmp)],
                port)  # fmt: skip


def smtp_sink() -> Proc:
    port = free_port()
    return Proc([tool("smtp-sink"), "-u", "nobody", f"127.0.0.1:{port}", "1000"], port)


def haproxy(tmp: Path, target: int, send_proxy: bool) -> Proc:
    port = free_port()
    cfg = tmp / f"haproxy-{port}.cfg"
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
        self.postfix.stop()


def _edge(tmp: Path, name: str, env: dict[str, str] | None = None, **options: Any) -> Proc:
    """smtpedge accepting only (queue_only: the queue runner does not
    deliver, as Postfix's queue manager is stopped); its defaults otherwise,
    the log file included."""
    (tmp / name).mkdir()
    return smtpedge(tmp / name, queue_only=True, log_file_path=None, smtp_accept_max=None,
                    env=env, **options)  # fmt: skip


@pytest.fixture
def servers() -> Iterator[dict[str, tuple[int, list[int]]]]:
    procs: list[Any] = []
    targets: dict[str, tuple[int, list[int]]] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        tmp = Path(d)
        try:
            for name, options in (
                ("smtpedge", {}),
                ("smtpedge-1-worker", {"workers": 1}),
                ("smtpedge-1-worker-asyncio", {"workers": 1, "event_loop": "asyncio"}),
            ):
                edge = _edge(tmp, name, **options)
                procs.append(edge)
                targets[name] = (edge.port, [edge.proc.pid])
            baseline = os.environ.get("BENCH_BASELINE")
            if baseline:
                edge = _edge(tmp, "smtpedge-baseline", env={**os.environ, "PYTHONPATH": baseline})
                procs.append(edge)
                targets["smtpedge-baseline"] = (edge.port, [edge.proc.pid])
            for name, proxy in (("smtpedge-via-haproxy", False),
                                ("smtpedge-via-haproxy-proxy-v2", True)):  # fmt: skip
                edge = _edge(tmp, name, hosts_proxy=["127.0.0.1"] if proxy else [])
                hp = haproxy(tmp, edge.port, proxy)
                procs += [edge, hp]
                targets[name] = (hp.port, [edge.proc.pid])
            pf = PostfixProc()
            procs.append(pf)
            targets["postfix-durable"] = (pf.port, [pf.proc.pid])
            for mode in ("durable", "discard"):
                (tmp / mode).mkdir()
                ai = aiosmtpd(tmp / mode, mode)
                procs.append(ai)
                targets[f"aiosmtpd-{mode}"] = (ai.port, [ai.proc.pid])
            sink = smtp_sink()
            procs.append(sink)
            targets["smtp-sink"] = (sink.port, [sink.proc.pid])
            yield targets
            queued = len(pf.postfix.queued())
            assert queued >= MESSAGES, f"Postfix queued {queued} messages"
        finally:
            for p in reversed(procs):
                p.stop()


@pytest.mark.parametrize("reuse", [False, True], ids=["new-connections", "reused-connections"])
def test_smtp_source(
    benchmark: Any, servers: dict[str, tuple[int, list[int]]], reuse: bool
) -> None:
    group = f"server, {'reused' if reuse else 'new'} connections"
    interleaved(benchmark, group, servers, reuse)


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
    edge = smtpedge(tmp_path, event_loop="asyncio", workers=1)
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
