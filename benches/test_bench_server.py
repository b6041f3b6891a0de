"""Server throughput under Postfix's smtp-source, every server in one run:
smtpedge (durable queue; asyncio, uvloop, two workers; through haproxy with
and without PROXY v2), aiosmtpd 1.4.6 writing and fsyncing each message,
aiosmtpd discarding, and Postfix's smtp-sink as the C baseline.

smtp-source sends MESSAGES messages of 2 KB over 20 parallel sessions, either
a new connection per message or reusing connections (-d). Each benchmark's
time is one whole run; ``benches/report.py`` turns it into messages per
second and ratios. Also here: the memory of 10,000 idle connections.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MESSAGES = int(os.environ.get("BENCH_MESSAGES", "5000"))
SESSIONS = 20
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
HERE = Path(__file__).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _tool(name: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
    if path is None:
        pytest.fail(f"{name} is missing: run scripts/install-peers")
    return path


class Proc:
    def __init__(self, args: list[str], port: int, **kw: Any) -> None:
        self.port = port
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     **kw)  # fmt: skip
        _wait(port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def smtpedge(tmp: Path, **options: Any) -> Proc:
    port = _free_port()
    lines = [f'spool_directory = "{tmp}"', f"daemon_smtp_ports = [{port}]",
             'log_file_path = "-"', "smtp_accept_max = 20000"]  # fmt: skip
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in options.items()]
    cfg = tmp / "bench.toml"
    cfg.write_text("\n".join(lines) + "\n")
    return Proc([sys.executable, "-m", "smtpedge", "serve", "--config", str(cfg)], port)


def aiosmtpd(tmp: Path, mode: str) -> Proc:
    port = _free_port()
    return Proc([sys.executable, str(HERE / "aiosmtpd_server.py"), str(port), mode, str(tmp)],
                port)  # fmt: skip


def smtp_sink() -> Proc:
    port = _free_port()
    return Proc([_tool("smtp-sink"), "-u", "nobody", f"127.0.0.1:{port}", "1000"], port)


def haproxy(tmp: Path, target: int, send_proxy: bool) -> Proc:
    port = _free_port()
    cfg = tmp / "haproxy.cfg"
    option = " send-proxy-v2" if send_proxy else ""
    cfg.write_text(
        "global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 60s\n    timeout server 60s\n"
        f"frontend f\n    bind 127.0.0.1:{port}\n    default_backend b\n"
        f"backend b\n    server s 127.0.0.1:{target}{option}\n"
    )
    return Proc([_tool("haproxy"), "-db", "-f", str(cfg)], port)


def _has_uvloop() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def run_source(port: int, reuse: bool) -> None:
    args = [_tool("smtp-source"), "-s", str(SESSIONS), "-m", str(MESSAGES), "-l", "2048",
            "-f", "bench@example.org", "-t", "sink@example.net",
            "-M", "source.example"]  # fmt: skip
    if reuse:
        args.append("-d")
    done = subprocess.run([*args, f"127.0.0.1:{port}"], capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr


SERVERS = [
    "smtpedge-durable",
    "smtpedge-durable-uvloop",
    "smtpedge-durable-2-workers",
    "smtpedge-via-haproxy",
    "smtpedge-via-haproxy-proxy-v2",
    "aiosmtpd-durable",
    "aiosmtpd-discard",
    "smtp-sink",
]


@pytest.fixture
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, Path, list[int]]]:
    name: str = request.param
    procs: list[Proc] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as d:
        tmp = Path(d)
        if name.startswith("smtpedge"):
            options: dict[str, Any] = {"event_loop": "asyncio"}
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
    cpu0 = _cpu_seconds(pids)
    benchmark.pedantic(run_source, args=(port, reuse), rounds=ROUNDS, iterations=1)
    # CPU the server itself (not the client, not haproxy) spent per message.
    cpu = _cpu_seconds(pids) - cpu0
    benchmark.extra_info["server_cpu_us_per_message"] = cpu / (MESSAGES * ROUNDS) * 1e6


def _cpu_seconds(pids: list[int]) -> float:
    """User plus system time of these processes and their children."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        every = [pid]
        kids = Path(f"/proc/{pid}/task/{pid}/children")
        if kids.exists():
            every += [int(p) for p in kids.read_text().split()]
        for p in every:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


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
