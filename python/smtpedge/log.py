"""Logging: one line per event, to stderr and to the log file.

Lines look like Exim's main log: a timestamp, the process ID, then the event
with ``H=`` for the real client and ``PX=`` for the proxy it came through.

``configure()`` (what ``smtpedge serve`` uses) never lets a slow disk or a
full stderr pipe block the event loop: records go into a bounded queue that a
writer thread empties. If the writer falls behind by more than ``QUEUE_MAX``
lines, new lines are dropped and counted, and one line saying how many were
lost is written when it catches up. A forked worker gets a writer of its own.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import os
import queue
import sys
from pathlib import Path

__all__ = ["QUEUE_MAX", "configure", "flush", "logger"]

logger = logging.getLogger("smtpedge")

_FORMAT = "%(asctime)s.%(msecs)03d [%(process)d] %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"
QUEUE_MAX = 10_000


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


def configure(log_path: Path | None, *, stderr: bool = True, level: int = logging.INFO) -> None:
    """Send smtpedge's log lines to stderr and ``log_path`` (created if needed),
    through a writer thread."""
    global _writer
    if _writer is not None:
        _writer.close()
        _writer = None
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    formatter = logging.Formatter(_FORMAT, _DATEFMT)
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
