"""Run a smtpedge Server in a background thread for tests that talk to it
over real loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from smtpedge.config import Config
from smtpedge.queue import Queue
from smtpedge.receiving.server import Server


class RunningServer:
    def __init__(self, spool: Path, handler: Any = None, **options: Any) -> None:
        values: dict[str, Any] = {
            "daemon_smtp_ports": [0],
            "spool_directory": str(spool),
            "primary_hostname": "mx.test",
            "log_file_path": "-",
        }
        values.update(options)
        self.config = Config.from_mapping(values)
        self.server = Server(handler, self.config)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("server did not start")
        self.port = self.server.port

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(grace=0.5), self.loop)
        fut.result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def queue(self) -> Queue:
        return Queue(self.config.spool_path)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Client:
    """A raw SMTP client on a blocking socket, optionally from a given
    127.0.0.x source address."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=(source, 0))  # fmt: skip
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> str:
        """Read one whole (possibly multi-line) reply."""
        lines: list[str] = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got {self.buf!r} {lines}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return "\n".join(lines)

    def cmd(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def closed_without_data(self, wait: float = 5.0) -> bool:
        """True if the server closes the connection without sending anything."""
        self.sock.settimeout(wait)
        try:
            data = self.sock.recv(1024)
        except ConnectionResetError:
            return True
        return data == b""

    def send_message(self, sender: str, rcpts: list[str], body: bytes) -> str:
        self.cmd(f"MAIL FROM:<{sender}>")
        for r in rcpts:
            self.cmd(f"RCPT TO:<{r}>")
        assert self.cmd("DATA").startswith("354")
        self.send(body + b"\r\n.\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate: Any, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def scrape(address: str) -> dict[str, float]:
    """A metrics endpoint's samples: {'name{labels}': value}."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def metric(samples: dict[str, float], name: str, labels: str = "") -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(v for k, v in samples.items()
               if k.split("{")[0] == name and labels in k)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


class ServeProcess:
    """``smtpedge serve`` in a child process with a generated TOML config.
    ``queue_only`` is on unless given: tests of the receiving side look at
    what stays in the queue; delivery tests pass ``queue_only=False``."""

    live: ClassVar[set[ServeProcess]] = set()  # stopped after each test (conftest)

    def __init__(self, spool: Path, **options: Any) -> None:
        import sys

        options.setdefault("queue_only", True)
        # One process unless a test asks for more (workers = 0 is the default:
        # one per CPU), so that proc.pid is the server that answers.
        options.setdefault("workers", 1)
        self.port = options.pop("port", None) or free_port()
        self.spool = spool
        spool.mkdir(parents=True, exist_ok=True)
        options.setdefault("primary_hostname", "mx.test")
        self.metrics = options.get("metrics_address", "")
        lines = [
            f'spool_directory = "{spool}"',
            f"daemon_smtp_ports = [{self.port}]",
        ]
        for key, value in options.items():
            lines.append(f"{key} = {_toml(value)}")
        self.config_path = spool.parent / f"smtpedge-{spool.name}-{self.port}.toml"
        self.config_path.write_text("\n".join(lines) + "\n")
        self.err_path = spool.parent / f"serve-{spool.name}-{self.port}.err"
        self.stderr = open(self.err_path, "wb")
        log_file = spool / "log" / "main.log"
        self._log_start = log_file.stat().st_size if log_file.exists() else 0
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpedge", "serve", "--config", str(self.config_path)],
            stderr=self.stderr,
        )
        ServeProcess.live.add(self)
        self.wait_log("smtpedge ready")

    def wait_log(self, text: str, count: int = 1, timeout: float = 60.0) -> str:
        """Wait until ``text`` is in this server's log lines ``count`` times;
        return them. Fails at once if the server exits first."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log
            if log.count(text) >= count:
                return log
            if self.proc.poll() is not None:
                err = self.err_path.read_text()
                raise RuntimeError(f"smtpedge serve exited ({self.proc.returncode}): {err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{text!r} not logged {count} time(s) within {timeout}s")
            time.sleep(0.02)

    @property
    def log(self) -> str:
        """What this server has logged so far (not earlier runs in the same
        data directory)."""
        log_file = self.spool / "log" / "main.log"
        if not log_file.exists():
            return ""
        with open(log_file, "rb") as f:
            f.seek(self._log_start)
            return f.read().decode("utf-8", "replace")

    def stop(self) -> int:
        import signal

        ServeProcess.live.discard(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return int(self.proc.returncode)

    def kill(self) -> None:
        ServeProcess.live.discard(self)
        self.proc.kill()
        self.proc.wait()
        self.stderr.close()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):  # routers and transports, as inline tables
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def peer(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        message = f"{name} is not installed (scripts/install-peers installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def swaks(port: int, *args: str, expect: int = 0) -> str:
    cmd = [peer("swaks"), "--server", f"127.0.0.1:{port}", "--timeout", "20",
           "--helo", "swaks.example", *args]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == expect, done.stdout + done.stderr
    return done.stdout


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str) -> Iterator[None]:
    """A tmpfs on ``path`` for the test's length: a tiny one (a full disk) or
    a read-only one, real errors that even root gets."""
    if os.geteuid() != 0 and os.environ.get("CI") != "true":
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


class ScriptedServer:
    """A small SMTP server on loopback whose replies a test chooses: to find
    out what a client does with a refusal, a multi-line reply or a deferral.
    ``replies`` maps a verb (``MAIL``, ``RCPT``, ``DATA``, ``.``: the reply
    to the message data) to a reply, or to a function of the command line
    giving one (``None``: the usual 250). Multi-line replies are given with
    ``\\r\\n`` between the lines. It records every command and message."""

    def __init__(self, replies: dict[str, Any] | None = None, *, host: str = "127.0.0.1",
                 extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
                 data_delay: float = 0.0) -> None:  # fmt: skip
        self.replies = replies or {}
        self.data_delay = data_delay  # seconds before the reply to the data
        self.extensions = extensions
        self.commands: list[str] = []
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.connections = 0
        self.host = host
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self._server = self.loop.run_until_complete(
                asyncio.start_server(self._session, host, 0)
            )
            ready.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        assert self._server is not None
        self.port: int = self._server.sockets[0].getsockname()[1]

    def _reply(self, verb: str, line: str, default: str) -> str:
        r = self.replies.get(verb)
        if callable(r):
            r = r(line)
        return str(r or default)

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1

        def send(text: str) -> None:
            writer.write(text.encode() + b"\r\n")

        send(self._reply("banner", "", "220 scripted.test ESMTP"))
        sender, rcpts = "", list[str]()
        try:
            while line_b := await reader.readline():
                line = line_b.decode("utf-8", "replace").rstrip("\r\n")
                self.commands.append(line)
                verb = line.split(" ", 1)[0].upper()
                if verb == "EHLO":
                    send("\r\n".join(f"250-{e}" for e in ("scripted.test", *self.extensions[:-1]))
                         + f"\r\n250 {self.extensions[-1]}" if self.extensions
                         else "250 scripted.test")  # fmt: skip
                elif verb == "HELO":
                    send("250 scripted.test")
                elif verb == "MAIL":
                    reply = self._reply("MAIL", line, "250 2.1.0 OK")
                    sender = line[10:].split(">")[0].lstrip("<") if reply[0] == "2" else ""
                    rcpts = []
                    send(reply)
                elif verb == "RCPT":
                    reply = self._reply("RCPT", line, "250 2.1.5 OK")
                    if reply[0] == "2":
                        rcpts.append(line[8:].split(">")[0].lstrip("<"))
                    send(reply)
                elif verb == "DATA":
                    if not rcpts:
                        send("554 5.5.1 no valid recipients")
                        continue
                    send(self._reply("DATA", line, "354 go ahead"))
                    data = b""
                    while (chunk := await reader.readline()) != b".\r\n":
                        if not chunk:
                            return  # the connection ended inside the data: no message
                        data += chunk
                    reply = self._reply(".", "", "250 2.0.0 queued")
                    if self.data_delay:
                        await asyncio.sleep(self.data_delay)
                    if reply[0] == "2":
                        self.messages.append((sender, rcpts, data))
                    send(reply)
                elif verb == "RSET":
                    sender, rcpts = "", []
                    send("250 2.0.0 OK")
                elif verb == "QUIT":
                    send("221 2.0.0 bye")
                    await writer.drain()
                    break
                else:
                    send("502 5.5.2 not here")
                await writer.drain()
        except OSError:
            pass  # the client went away (killed, say)
        finally:
            writer.close()

    def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def __enter__(self) -> ScriptedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class FakeDNS:
    """A DNS server on loopback UDP answering from ``records``:
    ``{("example.net", "MX"): ["10 mx1.example.net.", ...]}``. A name in
    ``failing`` gets SERVFAIL; any other name not in ``records`` gets NXDOMAIN
    (or an empty answer when the name has records of another type)."""

    def __init__(self, records: dict[tuple[str, str], list[str]],
                 failing: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.records = {(n.lower().rstrip("."), t.upper()): v for (n, t), v in records.items()}
        self.failing = {f.lower().rstrip(".") for f in failing}
        self.queries: list[tuple[str, str]] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data, addr = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = dns.message.from_wire(data)
            q = query.question[0]
            name = q.name.to_text(omit_final_dot=True).lower()
            rdtype = dns.rdatatype.to_text(q.rdtype)
            self.queries.append((name, rdtype))
            resp = dns.message.make_response(query)
            resp.flags |= dns.flags.AA
            if name in self.failing:
                resp.set_rcode(dns.rcode.SERVFAIL)
            elif (name, rdtype) in self.records:
                resp.answer.append(dns.rrset.from_text_list(
                    q.name, 60, "IN", rdtype, self.records[(name, rdtype)]))  # fmt: skip
            elif not any(n == name for n, _ in self.records):
                resp.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(resp.to_wire(), addr)

    def stop(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> FakeDNS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
