"""A real redis-server on loopback for the limits-store tests, started and
stopped by the test that needs it."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from serverutil import free_port, peer


class RedisServer:
    """redis-server on 127.0.0.1 with no persistence; ``stop()`` and
    ``start()`` again on the same port (a Redis outage and its end)."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        log = self.directory / "redis.log"
        self.proc = subprocess.Popen(
            [peer("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(log), "--daemonize", "no", "--protected-mode", "no"],
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {log.read_text()[-2000:]}")
            try:
                if self.client().ping():
                    return
            except Exception:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer PING within 30s")
            time.sleep(0.02)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
