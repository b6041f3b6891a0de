"""The sans-I/O SMTP client: reply bytes in, ``Response`` objects out;
commands in, bytes out. It never touches a socket (the asyncio adapter is
``smtpedge.sending.client``), so every rule is testable on plain bytes.

A reply (RFC 5321 section 4.2) is one or more lines, each ``code-text`` but
the last ``code text``; every line of one reply carries the same code. Reply
lines are parsed with the hot-path parser (``smtpedge.smtpline``), which also
splits off the RFC 3463 enhanced status code. Anything else from the server is
a ``RemoteProtocolError``: a line that does not parse, codes that change in
the middle of a reply, a line longer than ``max_line`` or a reply of more
than ``max_lines`` lines (a server cannot make the client buffer without
bound).

    conn = ClientConnection()
    conn.receive_data(b"220 mx.example ESMTP\\r\\n")
    banner = conn.next_response()        # Response(code=220, ...)
    conn.send_command("EHLO client.example")
    sock.sendall(conn.data_to_send())
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpedge import data, smtpline
from smtpedge.errors import ReplySyntaxError, SmtpedgeError

__all__ = ["ClientConnection", "Extensions", "RemoteProtocolError", "Response"]


class RemoteProtocolError(SmtpedgeError):
    """The server broke the protocol: its bytes are not SMTP replies."""


@dataclass(frozen=True, slots=True)
class Response:
    """One whole reply. ``status`` is the enhanced status code of its first
    line (None when the server gave none); ``lines`` the text of each line,
    status codes removed. ``local`` marks a response smtpedge made up itself
    (a timeout, a refusal before sending), not one the server sent."""

    code: int
    status: str | None
    lines: tuple[str, ...]
    local: bool = False

    @property
    def text(self) -> str:
        return " ".join(line for line in self.lines if line)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    def wire_lines(self) -> tuple[str, ...]:
        """The reply's lines as the server sent them (``550-5.1.1 first``,
        ``550 5.1.1 last``): what a DSN's Diagnostic-Code carries."""
        last = len(self.lines) - 1
        out = []
        for i, line in enumerate(self.lines):
            text = f"{self.status} {line}" if self.status else line
            out.append(f"{self.code}{'-' if i < last else ' '}{text}".rstrip())
        return tuple(out)

    def __str__(self) -> str:
        """The reply as one line: ``550 5.1.1 first line / second line``."""
        status = f" {self.status}" if self.status else ""
        return f"{self.code}{status} " + " / ".join(self.lines)


@dataclass(frozen=True, slots=True)
class Extensions:
    """What an EHLO reply offered: keywords (upper case) with their
    parameters, e.g. ``{"SIZE": "52428800", "PIPELINING": ""}``."""

    keywords: dict[str, str]

    @classmethod
    def from_ehlo(cls, response: Response) -> Extensions:
        """The EHLO reply's lines after the first (the greeting)."""
        out: dict[str, str] = {}
        for line in response.lines[1:]:
            keyword, _, params = line.strip().partition(" ")
            if keyword:
                out[keyword.upper()] = params.strip()
        return cls(out)

    def __contains__(self, keyword: str) -> bool:
        return keyword.upper() in self.keywords

    @property
    def size_limit(self) -> int | None:
        """The SIZE the server declared (None: no SIZE, or no fixed limit)."""
        value = self.keywords.get("SIZE")
        if value is None or not value.isdigit() or int(value) == 0:
            return None
        return int(value)


class ClientConnection:
    """The client side of one SMTP connection, without I/O."""

    __slots__ = ("_buf", "_lines", "_out", "closed", "max_line", "max_lines")

    def __init__(self, *, max_line: int = 4096, max_lines: int = 1000) -> None:
        self.max_line = max_line
        self.max_lines = max_lines
        self._buf = bytearray()
        self._lines: list[smtpline.Reply] = []
        self._out = bytearray()
        self.closed = False

    # -- input ----------------------------------------------------------------------

    def receive_data(self, chunk: bytes) -> None:
        """Bytes from the server; b"" when it closed the connection."""
        if not chunk:
            self.closed = True
            return
        self._buf += chunk

    def next_response(self) -> Response | None:
        """The next whole reply, or None until more bytes arrive. Raises
        RemoteProtocolError for bytes that are not SMTP replies."""
        buf = self._buf
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > self.max_line:
                    raise RemoteProtocolError(f"reply line longer than {self.max_line} bytes")
                if self.closed and (buf or self._lines):
                    raise RemoteProtocolError("connection closed in the middle of a reply")
                return None
            if nl + 1 > self.max_line:
                raise RemoteProtocolError(f"reply line longer than {self.max_line} bytes")
            raw = bytes(buf[: nl + 1])
            del buf[: nl + 1]
            try:
                line = smtpline.parse_reply(raw)
            except ReplySyntaxError as exc:
                raise RemoteProtocolError(f"not an SMTP reply: {exc}: {raw[:60]!r}") from None
            if self._lines and line.code != self._lines[0].code:
                raise RemoteProtocolError(
                    f"reply code changed from {self._lines[0].code} to {line.code} "
                    "in a multi-line reply"
                )
            self._lines.append(line)
            if len(self._lines) > self.max_lines:
                raise RemoteProtocolError(f"reply of more than {self.max_lines} lines")
            if line.last:
                lines, self._lines = self._lines, []
                return Response(lines[0].code, lines[0].status, tuple(x.text for x in lines))

    # -- output ---------------------------------------------------------------------

    def send_command(self, line: str | bytes) -> None:
        """Queue one command line (CRLF is added). A line holding CR or LF
        is refused: it would smuggle a second command."""
        raw = line.encode("utf-8") if isinstance(line, str) else line
        if b"\r" in raw or b"\n" in raw:
            raise ValueError(f"command line holds CR or LF: {raw[:60]!r}")
        self._out += raw + b"\r\n"

    def send_message(self, content: bytes) -> None:
        """Queue a message after DATA's 354: dot-stuffed, line ends made
        CRLF, then the final ``.`` line (RFC 5321 section 4.5.2), by the
        hot-path ``dot_stuff``."""
        self._out += data.dot_stuff(content)

    def send_chunk(self, chunk: bytes, *, last: bool) -> None:
        """Queue a BDAT chunk (RFC 3030): the command and its bytes as they are."""
        self._out += b"BDAT %d%s\r\n" % (len(chunk), b" LAST" if last else b"")
        self._out += chunk

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out
