"""The DATA stream (RFC 5321 4.5.2): ``DataScanner`` finds the end of data
across any chunk boundary, undoes dot-stuffing, enforces a size limit and
refuses (or normalises) bare LF/CR so SMTP smuggling cannot end a message
early; ``dot_stuff`` prepares content for sending.

    scanner = DataScanner(max_size=10_000_000)
    body = scanner.feed(chunk)          # repeat until scanner.done
    if scanner.error: reply = scanner.error.reply
    rest = scanner.remainder            # bytes after "." CRLF, untouched
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from smtpedge._backend import impl as _impl
from smtpedge.errors import DataError

if TYPE_CHECKING:
    from smtpedge._pure.data import DataScanner, dot_stuff
else:
    DataScanner = _impl.DataScanner
    dot_stuff = _impl.dot_stuff

__all__ = ["DataError", "DataScanner", "dot_stuff"]
