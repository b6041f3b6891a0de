"""Logging: one line per event, to stderr and to the log file.

Lines look like Exim's main log: a timestamp, the process ID, then the event
with ``H=`` for the real client and ``PX=`` for the proxy it came through.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["configure", "logger"]

logger = logging.getLogger("smtpedge")

_FORMAT = "%(asctime)s.%(msecs)03d [%(process)d] %(message)s"
_DATEFMT = "%Y-%m-%d %H:%M:%S"


def configure(log_path: Path | None, *, stderr: bool = True, level: int = logging.INFO) -> None:
    """Send smtpedge's log lines to stderr and ``log_path`` (created if needed)."""
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    formatter = logging.Formatter(_FORMAT, _DATEFMT)
    if stderr:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(formatter)
        logger.addHandler(h)
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_path, encoding="utf-8")
        fh.setFormatter(formatter)
        logger.addHandler(fh)
    logger.setLevel(level)
    logger.propagate = False
