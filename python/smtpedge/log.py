"""Logging: one line per event, to stderr and to the log file.

Lines look like Exim's main log: a timestamp, the process ID, then the event
with ``H=`` for the real client and ``PX=`` for the proxy it came through.

``configure()`` (what ``smtpedge serve`` uses) never lets a slow disk or a
full stderr pipe block the event loop: records go into a bounded queue that a
writer thread empties. If the writer falls behind by more than ``QUEUE_MAX``
lines, new lines are dropped and counted, and one line saying how many were
lost is written when it catches up. A forked worker gets a writer of its own.

With ``fmt="json"`` (``log_format = "json"``) each line is one JSON object
for log shippers: ``time`` (UTC, ISO 8601), ``pid``, ``level`` and ``msg``
(the text line's event, word for word), plus what the text line says in its
fixed places: ``id`` (the queue ID a line starts with), ``flag`` (``<=``,
``=>``, ``**``, ``==``), ``address`` (the ``<address>`` after the flag) and
each Exim-style tag (``H``, ``PX``, ``R``, ``T``, ``P``, ``S``, ...) by name.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import re
import sys
import time
from pathlib import Path

__all__ = ["QUEUE_MAX", "JSONFormatter", "configure", "flush", "logger"]

logger = logging.getLogger("smtpedge")

_FORMAT = "%(asctime)s.%(msecs)03d [%(process)d] %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"
QUEUE_MAX = 10_000

_QUEUE_ID = re.compile(r"[0-9A-Za-z]{16}\Z")
_FLAGS = frozenset({"<=", "=>", "**", "==", "->"})
# A tag's value is one word, or a host with its address: "(helo) [1.2.3.4]:25",
# "mx.example.com [1.2.3.4]:25", "[1.2.3.4]:25", or a "quoted text".
_TAG = re.compile(r'(?:^|(?<= ))([A-Z]{1,3})=("[^"]*"|\S+(?: \[[^\]\s]*\](?::\d+)?)?)')


class JSONFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg = f"{msg}\n{self.formatException(record.exc_info)}"
        t = record.created
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
            + f".{int(t * 1000) % 1000:03d}Z",
            "pid": record.process,
            "level": record.levelname.lower(),
            "msg": msg,
        }
        words = msg.split(" ", 3)
        i = 0
        if words and _QUEUE_ID.match(words[0]):
            out["id"] = words[0]
            i = 1
        if len(words) > i and words[i] in _FLAGS:
            out["flag"] = words[i]
            if len(words) > i + 1 and words[i + 1].startswith("<"):
                out["address"] = words[i + 1].rstrip(":,")[1:].removesuffix(">")
        for m in _TAG.finditer(msg):
            value = m.group(2)
            value = value[1:-1] if value.startswith('"') else value.rstrip(":,;")
            out.setdefault(m.group(1), value)
        return json.dumps(out, ensure_ascii=False)


class _BoundedQueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread; drops (and counts) when it is full."""

    def __init__(self) -> None:
        super().__init__(queue.Queue(QUEUE_MAX))
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        q = self.queue
        try:
            if self.dropped:
                note = logging.makeLogRecord(
                    {"msg": f"{self.dropped} log line(s) dropped: the log writer fell behind",
                     "levelno": logging.WARNING, "levelname": "WARNING"}
                )  # fmt: skip
                q.put_nowait(note)
                self.dropped = 0
            q.put_nowait(record)
        except queue.Full:
            self.dropped += 1


class _Writer:
    """The queue handler on ``logger`` and the thread that writes its lines."""

    def __init__(self, targets: list[logging.Handler]) -> None:
        self.targets = targets
        self.handler = _BoundedQueueHandler()
        self.listener = logging.handlers.QueueListener(self.handler.queue, *targets)
        self.listener.start()
        logger.addHandler(self.handler)

    def stop(self) -> None:
        """Write what is queued, stop the thread (the targets stay open)."""
        logger.removeHandler(self.handler)
        if self.listener._thread is not None:
            self.listener.stop()

    def close(self) -> None:
        self.stop()
        for h in self.targets:
            h.close()


_writer: _Writer | None = None


def configure(
    log_path: Path | None, *, stderr: bool = True, level: int = logging.INFO, fmt: str = "text"
) -> None:
    """Send smtpedge's log lines to stderr and ``log_path`` (created if needed),
    through a writer thread; ``fmt`` is ``text`` or ``json``."""
    global _writer
    if _writer is not None:
        _writer.close()
        _writer = None
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    formatter = JSONFormatter() if fmt == "json" else logging.Formatter(_FORMAT, _DATEFMT)
    targets: list[logging.Handler] = []
    if stderr:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(formatter)
        targets.append(h)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_path, encoding="utf-8")
        fh.setFormatter(formatter)
        targets.append(fh)
    _writer = _Writer(targets)
    logger.setLevel(level)
    logger.propagate = False


def flush() -> None:
    """Write every queued line and stop the writer thread; lines logged after
    this are written directly (for a process about to exit)."""
    global _writer
    if _writer is None:
        return
    writer, _writer = _writer, None
    writer.stop()
    for h in writer.targets:
        logger.addHandler(h)


def _before_fork() -> None:
    # Hold the files' handler locks across the fork, so that the writer thread
    # is not in the middle of a write (holding a file object's own buffer lock,
    # which the child would inherit held, for ever) when it happens.
    if _writer is not None:
        for h in _writer.targets:
            h.acquire()


def _after_fork_in_parent() -> None:
    if _writer is not None:
        for h in _writer.targets:
            h.release()


def _after_fork_in_child() -> None:
    # (logging itself gives the child fresh handler locks.) The writer thread
    # did not survive the fork, and its queue's lock may have been held when it
    # happened: start afresh with the same files. What the parent had queued is
    # the parent's to write.
    global _writer
    if _writer is None:
        return
    old, _writer = _writer, None
    logger.removeHandler(old.handler)
    _writer = _Writer(old.targets)


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
atexit.register(flush)
