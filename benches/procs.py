"""The servers the benchmarks run, each a real process on a loopback port:
smtpedge, aiosmtpd, Postfix (a private instance, see ``tests/postfix.py``),
Postfix's smtp-sink and smtp-source, and haproxy; with the CPU accounting of
a process tree."""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
SESSIONS = 20
sys.path.insert(0, str(HERE.parent / "tests"))

from postfix import Postfix  # noqa: E402  (tests/postfix.py)
from serverutil import free_port, wait_port  # noqa: E402

__all__ = ["Postfix", "Proc", "Sink", "cpu_seconds", "free_port", "interleaved", "run_source",
           "smtpedge", "tool"]  # fmt: skip

MESSAGES = int(os.environ.get("BENCH_MESSAGES", "5000"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def tool(name: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
    if path is None:
        pytest.fail(f"{name} is missing: run scripts/install-peers")
    return path


class Proc:
    def __init__(self, args: list[str], port: int, **kw: Any) -> None:
        self.port = port
        kw.setdefault("stdout", subprocess.DEVNULL)
        self.proc = subprocess.Popen(args, stderr=subprocess.DEVNULL, **kw)
        wait_port(port, timeout=20)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def smtpedge(tmp: Path, extra: str = "", env: dict[str, str] | None = None,
             **options: Any) -> Proc:  # fmt: skip
    """``smtpedge serve`` on a free port with its data in ``tmp``; ``extra``
    is more TOML (tables such as ``[[routers]]``). An option given as None is
    left at its default (``log_file_path=None``: the log file in ``tmp``).
    ``env``: the server's environment (default: this one's)."""
    port = free_port()
    options = {"log_file_path": "-", "smtp_accept_max": 20000, **options}
    lines = [f'spool_directory = "{tmp}"', f"daemon_smtp_ports = [{port}]"]
    lines += [f"{k} = {v!r}".replace("'", '"').replace("True", "true").replace("False", "false")
              for k, v in options.items() if v is not None]  # fmt: skip
    cfg = tmp / "bench.toml"
    cfg.write_text("\n".join(lines) + "\n" + extra)
    return Proc([sys.executable, "-m", "smtpedge", "serve", "--config", str(cfg)], port, env=env)


class Sink(Proc):
    """Postfix's smtp-sink, counting the messages it took (``-c``)."""

    def __init__(self, tmp: Path) -> None:
        self.out_path = tmp / f"sink-{id(self)}.out"
        self._out = open(self.out_path, "wb")  # closed in stop()
        port = free_port()
        super().__init__([tool("smtp-sink"), "-c", "-u", "nobody", f"127.0.0.1:{port}", "1000"],
                         port, stdout=self._out)  # fmt: skip

    def received(self) -> int:
        counts = re.findall(rb"mesg=(\d+)", self.out_path.read_bytes()[-200:])
        return int(counts[-1]) if counts else 0

    def wait_received(self, count: int, timeout: float = 900.0) -> None:
        deadline = time.monotonic() + timeout
        while self.received() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"smtp-sink took {self.received()} of {count} messages")
            time.sleep(0.01)

    def stop(self) -> None:
        super().stop()
        self._out.close()


def run_source(port: int, messages: int, reuse: bool, recipient: str = "sink@example.net") -> None:
    """smtp-source: ``messages`` messages of 2 KB over SESSIONS sessions."""
    args = [tool("smtp-source"), "-s", str(SESSIONS), "-m", str(messages), "-l", "2048",
            "-f", "bench@example.org", "-t", recipient, "-M", "source.example"]  # fmt: skip
    if reuse:
        args.append("-d")
    done = subprocess.run([*args, f"127.0.0.1:{port}"], capture_output=True, timeout=900)
    assert done.returncode == 0, done.stderr


def cpu_seconds(pids: list[int]) -> float:
    """User plus system time of these processes and their children, those
    running and those already reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        every = [pid]
        kids = Path(f"/proc/{pid}/task/{pid}/children")
        if kids.exists():
            every += [int(p) for p in kids.read_text().split()]
        for p in every:
            try:
                fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            except FileNotFoundError:  # it ended meanwhile
                continue
            total += sum(int(f) for f in fields[11:15]) / tick
    return total


def interleaved(
    benchmark: Any, group: str, targets: dict[str, tuple[int, list[int]]], reuse: bool = False
) -> None:
    """smtp-source against each target in turn, ROUNDS times, so that a busy
    moment of the machine hits them all alike. ``targets`` maps a name to the
    port and the server PIDs whose CPU is counted (none: not counted). The
    medians and the CPU per message go in extra_info."""
    times: dict[str, list[float]] = {name: [] for name in targets}
    cpu: dict[str, float] = dict.fromkeys(targets, 0.0)

    def one_round() -> None:
        for name, (port, pids) in targets.items():
            c0 = cpu_seconds(pids)
            t0 = time.perf_counter()
            run_source(port, MESSAGES, reuse)
            times[name].append(time.perf_counter() - t0)
            cpu[name] += cpu_seconds(pids) - c0

    benchmark.group = group
    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["messages"] = MESSAGES
    benchmark.extra_info["median_seconds"] = {n: statistics.median(t) for n, t in times.items()}
    benchmark.extra_info["server_cpu_us_per_message"] = {
        n: c / (MESSAGES * ROUNDS) * 1e6 for n, c in cpu.items() if targets[n][1]
    }
