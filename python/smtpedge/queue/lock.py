"""The data directory lock: one server per data directory."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["DataDirectoryBusy", "DataDirectoryLock"]


class DataDirectoryLock:
    """``<spool_directory>/smtpedge.pid``, locked (``flock``) for as long as a
    server uses the directory, with that server's PID in it. A second server
    on the same directory is refused before it touches anything; queue
    commands do not take the lock and keep working beside a server."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "smtpedge.pid"
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise DataDirectoryBusy(
                f"the data directory {directory} is in use by smtpedge process {holder} "
                f"(lock file {self.path})"
            ) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


class DataDirectoryBusy(Exception):
    """Another smtpedge server holds the data directory."""
