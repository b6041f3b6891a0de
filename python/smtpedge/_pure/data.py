"""The DATA stream scanner and dot-stuffing (twin of
rust/smtpedge-core/src/data.rs).

Only a real CRLF "." CRLF ends a message; bare LF or CR never ends a line that
could end it, so SMTP smuggling payloads cannot end a message early. With
``bare_newline="reject"`` (the default) the first bare LF/CR fails the message
while the scanner reads on to the real terminator; with ``"normalize"`` each
bare LF or CR becomes CRLF.
"""

from __future__ import annotations

import re

from smtpedge._pure._args import as_bytes
from smtpedge.errors import DataError

_NEWLINE = re.compile(rb"[\r\n]")

# States (see data.rs): line start (real / after a bare newline), ".", ".\r",
# mid-line, CR seen mid-line, done.
_LS_REAL, _LS_BARE, _DOT_REAL, _DOT_BARE, _DOTCR_REAL, _DOTCR_BARE, _MID, _CR, _DONE = range(9)

_REPLIES = {
    "bare_lf": (550, "5.5.2", "Message contains a bare LF (line endings must be CRLF)"),
    "bare_cr": (550, "5.5.2", "Message contains a bare CR (line endings must be CRLF)"),
    "too_big": (552, "5.3.4", "Message size exceeds fixed maximum message size"),
}


class DataScanner:
    """Incremental reader of the DATA stream.

    ``feed(chunk)`` returns the message bytes the chunk holds (unstuffed, and
    nothing once the message has failed); after the terminator ``done`` is true
    and ``remainder`` holds the bytes of that chunk that follow it, untouched.
    ``error`` is the DataError to answer with, or None.
    """

    __slots__ = (
        "_consumed",
        "_error",
        "_failure",
        "_max_size",
        "_reject",
        "_remainder",
        "_size",
        "_state",
    )

    def __init__(self, max_size: int | None = None, *, bare_newline: str = "reject") -> None:
        if bare_newline not in ("reject", "normalize"):
            raise ValueError(f"bare_newline must be 'reject' or 'normalize', not '{bare_newline}'")
        if max_size is not None and max_size < 0:
            raise ValueError("max_size must not be negative")
        self._state = _LS_REAL
        self._reject = bare_newline == "reject"
        self._max_size = max_size
        self._size = 0
        self._consumed = 0
        self._failure: tuple[str, int] | None = None
        self._error: DataError | None = None
        self._remainder = b""

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def size(self) -> int:
        """Message bytes seen so far (counted on after a failure)."""
        return self._size

    @property
    def consumed(self) -> int:
        """Stream bytes consumed so far, terminator included."""
        return self._consumed

    @property
    def remainder(self) -> bytes:
        return self._remainder

    @property
    def error(self) -> DataError | None:
        if self._failure is not None and self._error is None:
            kind, at = self._failure
            code, status, text = _REPLIES[kind]
            self._error = DataError(code, status, text, at)
        return self._error

    def _fail(self, kind: str, at: int) -> None:
        if self._failure is None:
            self._failure = (kind, at)

    def _emit(self, out: list[bytes], b: bytes, at: int) -> None:
        self._size += len(b)
        if self._max_size is not None and self._size > self._max_size:
            self._fail("too_big", at)
        if self._failure is None:
            out.append(b)

    def feed(self, data: bytes) -> bytes:
        if self._state == _DONE:
            raise ValueError("the DATA scanner has already seen the end of data")
        data = as_bytes(data, "data")
        out: list[bytes] = []
        base = self._consumed
        n = len(data)
        i = 0
        state = self._state
        search = _NEWLINE.search
        while i < n:
            at = base + i
            c = data[i]
            if state == _MID:
                m = search(data, i)
                j = m.start() if m else n
                if j > i:
                    self._emit(out, data[i:j], at)
                    i = j
                    continue
                if c == 0x0D:
                    state = _CR
                else:
                    if self._reject:
                        self._fail("bare_lf", at)
                    self._emit(out, b"\r\n", at)
                    state = _LS_BARE
                i += 1
            elif state == _CR:
                if c == 0x0A:
                    self._emit(out, b"\r\n", at)
                    state = _LS_REAL
                    i += 1
                else:
                    if self._reject:
                        self._fail("bare_cr", at - 1)
                    self._emit(out, b"\r\n", at)
                    state = _LS_BARE
            elif state in (_LS_REAL, _LS_BARE):
                if c == 0x2E:
                    state = _DOT_REAL if state == _LS_REAL else _DOT_BARE
                    i += 1
                else:
                    state = _MID
            elif state in (_DOT_REAL, _DOT_BARE):
                if c == 0x0D:
                    state = _DOTCR_REAL if state == _DOT_REAL else _DOTCR_BARE
                    i += 1
                elif c == 0x0A:
                    if self._reject:
                        self._fail("bare_lf", at)
                    self._emit(out, b".\r\n", at)
                    state = _LS_BARE
                    i += 1
                else:
                    state = _MID
            else:  # _DOTCR_REAL / _DOTCR_BARE
                if c == 0x0A:
                    i += 1
                    if state == _DOTCR_REAL:
                        self._state = _DONE
                        self._consumed = base + i
                        self._remainder = data[i:]
                        return b"".join(out)
                    self._emit(out, b".\r\n", at)
                    state = _LS_REAL
                else:
                    if self._reject:
                        self._fail("bare_cr", at - 1)
                    self._emit(out, b".\r\n", at)
                    state = _LS_BARE
        self._state = state
        self._consumed = base + n
        return b"".join(out)


def dot_stuff(content: bytes) -> bytes:
    """Content ready to send after DATA: CRLF line endings (bare CR or LF made
    CRLF), a final CRLF when missing, a "." before each line starting with ".",
    and the "." CRLF terminator."""
    content = as_bytes(content, "content")
    out: list[bytes] = []
    at_line_start = True
    i = 0
    n = len(content)
    search = _NEWLINE.search
    while i < n:
        if at_line_start and content[i] == 0x2E:
            out.append(b".")
        m = search(content, i)
        j = m.start() if m else n
        out.append(content[i:j])
        i = j
        if i >= n:
            at_line_start = False
            break
        if content[i] == 0x0D and i + 1 < n and content[i + 1] == 0x0A:
            i += 2
        else:
            i += 1
        out.append(b"\r\n")
        at_line_start = True
    if not at_line_start:
        out.append(b"\r\n")
    out.append(b".\r\n")
    return b"".join(out)
