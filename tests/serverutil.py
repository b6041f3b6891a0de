"""Run a smtpedge Server in a background thread for tests that talk to it
over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

from smtpedge.config import Config
from smtpedge.queue import Queue
from smtpedge.server import Server


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


def wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())
