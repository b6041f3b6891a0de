"""aiosmtpd 1.4.6 as a benchmark peer: ``durable`` writes each message to its
own file and fsyncs file and directory before answering 250 (what a queue
must do); ``discard`` answers 250 and keeps nothing.

    python benches/aiosmtpd_server.py PORT durable|discard DIRECTORY
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from typing import Any

from aiosmtpd.smtp import SMTP


class Durable:
    def __init__(self, directory: str) -> None:
        self.directory = directory
        os.makedirs(directory, exist_ok=True)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        name = os.path.join(self.directory, uuid.uuid4().hex)
        with open(name, "wb") as f:
            f.write(envelope.original_content or envelope.content)
            f.flush()
            os.fsync(f.fileno())
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return "250 OK"


class Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


async def main(port: int, mode: str, directory: str) -> None:
    handler = Durable(directory) if mode == "durable" else Discard()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, data_size_limit=None, hostname="aiosmtpd.test"),
        "127.0.0.1", port, backlog=4096,
    )  # fmt: skip
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
