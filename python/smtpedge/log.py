"""Logging: one line per event, to stderr and to the log file.

Lines look like Exim's main log: a timestamp, the process ID, then the event
with ``H=`` for the real client and ``PX=`` for the proxy it came through.

``configure()`` (what ``smtpedge serve`` uses) never lets a slow disk or a
full stderr pipe block the event loop: lines are formatted where they are
logged and go into a bounded list that a writer thread empties, all that has
gathered in one write. If the writer falls behind by more than ``QUEUE_MAX``
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
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["QUEUE_MAX", "JSONFormatter", "configure", "flush", "info", "logger", "process_id"]

logger = logging.getLogger("smtpedge")

_FORMAT = "%(asctime)s.%(msecs)03d [%(process)d] %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"
QUEUE_MAX = 10_000
# After the first line of a batch, the writer waits this long for more, so a
# busy server wakes it and writes once per batch, not once per line.
GATHER_SECONDS = 0.02
_pid = os.getpid()  # this process's, set again in a child after a fork


def process_id() -> int:
    """This process's PID, kept since the last fork (``os.getpid`` is a
    system call each time)."""
    return _pid


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
        return self.line(msg, record.created, record.levelname)

    def line(self, msg: str, t: float, level: str) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
            + f".{int(t * 1000) % 1000:03d}Z",
            "pid": _pid,
            "level": level.lower(),
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


class _TextFormatter(logging.Formatter):
    """The text line: ``_FORMAT``, with the date part made once a second."""

    def __init__(self) -> None:
        super().__init__(_FORMAT, _DATEFMT)
        self._second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg = f"{msg}\n{self.formatException(record.exc_info)}"
        return self.line(msg, record.created, record.levelname)

    def line(self, msg: str, t: float, level: str) -> str:
        second, stamp = self._second
        if int(t) != second:
            second = int(t)
            stamp = time.strftime(_DATEFMT, time.localtime(second))
            self._second = (second, stamp)
        return f"{stamp}.{int((t - second) * 1000):03d} [{_pid}] {msg}"


class _BatchHandler(logging.Handler):
    """Formats each record where it is logged and hands the line to the writer."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__()
        self.writer = writer

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: the writer's list has its own.
        if not self.filter(record):
            return False
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.writer.put(line)


class _Writer:
    """The handler on ``logger`` and the thread that writes its lines, as
    many as have gathered in one write per target: the first line of a batch
    wakes the thread, which waits ``GATHER_SECONDS`` for more, so a busy server
    wakes it once per batch, not once per line (a line reaches the log at
    most that much later; stopping writes at once)."""

    def __init__(
        self, targets: list[logging.StreamHandler[Any]], formatter: JSONFormatter | _TextFormatter
    ) -> None:
        self.targets = targets
        self.formatter = formatter
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.dropped = 0
        self.handler = _BatchHandler(self)
        self.handler.setFormatter(formatter)
        self._thread = threading.Thread(target=self._run, name="smtpedge-log", daemon=True)
        self._thread.start()
        logger.addHandler(self.handler)

    def put(self, line: str) -> None:
        with self._lock:
            if len(self._lines) >= QUEUE_MAX:
                self.dropped += 1
                return
            self._lines.append(line)
            first = len(self._lines) == 1
        if first:
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._stop.wait(GATHER_SECONDS)
            self._wake.clear()
            with self._lock:
                lines, self._lines = self._lines, []
                dropped, self.dropped = self.dropped, 0
                stopping = self._stop.is_set()
            if dropped:
                note = logging.makeLogRecord(
                    {"msg": f"{dropped} log line(s) dropped: the log writer fell behind",
                     "levelno": logging.WARNING, "levelname": "WARNING"}
                )  # fmt: skip
                lines.append(self.handler.format(note))
            if lines:
                text = "\n".join(lines) + "\n"
                for h in self.targets:
                    h.acquire()
                    try:
                        h.stream.write(text)
                        h.stream.flush()
                    except (OSError, ValueError):
                        pass  # a closed or broken stderr: the file still gets it
                    finally:
                        h.release()
            if stopping:
                return

    def stop(self) -> None:
        """Write what is queued, stop the thread (the targets stay open)."""
        logger.removeHandler(self.handler)
        self._stop.set()
        self._wake.set()
        self._thread.join()

    def close(self) -> None:
        self.stop()
        for h in self.targets:
            h.close()


_writer: _Writer | None = None


def info(msg: str, *args: object) -> None:
    """``logger.info(msg, *args)``; for the lines of every session. When
    ``configure()`` set up the writer and nothing else was added to the
    logger since, the line is formatted and queued at once, without a
    ``LogRecord`` and the handler chain (a few microseconds a line)."""
    w = _writer
    if (
        w is None
        or logger.disabled
        or logger.filters
        or len(logger.handlers) != 1
        or logger.handlers[0] is not w.handler
        or w.handler.filters
        or not logger.isEnabledFor(logging.INFO)
    ):
        logger.info(msg, *args)
        return
    try:
        text = msg % args if args else msg
    except (TypeError, ValueError):
        logger.info(msg, *args)  # logging reports the bad arguments
        return
    w.put(w.formatter.line(text, time.time(), "INFO"))


def configure(
    log_path: Path | None, *, stderr: bool = True, level: int = logging.INFO, fmt: str = "text"
) -> None:
    """Send smtpedge's log lines to stderr and ``log_path`` (created if needed),
    through a writer thread; ``fmt`` is ``text`` or ``json``.

    This is the logging of the ``smtpedge`` process: its lines name no source
    line, thread or process object, so ``logging`` does not look those up for
    each record (a stack walk and a system call or two per line)."""
    global _writer
    if _writer is not None:
        _writer.close()
        _writer = None
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    formatter = JSONFormatter() if fmt == "json" else _TextFormatter()
    targets: list[logging.StreamHandler[Any]] = []
    if stderr:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(formatter)
        targets.append(h)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_path, encoding="utf-8")
        fh.setFormatter(formatter)
        targets.append(fh)
    _writer = _Writer(targets, formatter)
    logger.setLevel(level)
    logger.propagate = False
    logger.findCaller = _no_caller  # type: ignore[method-assign]
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def _no_caller(*args: object, **kwargs: object) -> tuple[str, int, str, None]:
    return "(unknown file)", 0, "(unknown function)", None


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
    global _writer, _pid
    _pid = os.getpid()
    if _writer is None:
        return
    old, _writer = _writer, None
    logger.removeHandler(old.handler)
    _writer = _Writer(old.targets, old.formatter)


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
atexit.register(flush)
