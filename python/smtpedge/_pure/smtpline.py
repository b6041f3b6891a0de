"""SMTP command and reply lines (twin of rust/smtpedge-core/src/smtpline.rs).

RFC 5321 4.1.2 grammar, with RFC 6531 (SMTPUTF8) extensions:

    Path = "<" [ A-d-l ":" ] Mailbox ">"
    Mailbox = Local-part "@" ( Domain / address-literal )
    Local-part = Dot-string / Quoted-string
    esmtp-param = esmtp-keyword ["=" esmtp-value]
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpedge._pure._args import as_bytes
from smtpedge._pure.ip import parse_ipv6
from smtpedge.errors import ReplySyntaxError, SMTPSyntaxError

MAX_PATH = 256
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255
DEFAULT_MAX_LINE = 2048
VERBS = (
    "EHLO", "HELO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "VRFY", "EXPN", "HELP",
    "QUIT", "STARTTLS", "AUTH",
)  # fmt: skip
_VERB_SET = frozenset(VERBS)


@dataclass(frozen=True, slots=True)
class Path:
    """A mailbox path as written: a quoted local part keeps its quotes, an
    address literal its brackets. ``<>`` has both parts empty; ``<Postmaster>``
    has no domain."""

    local_part: str
    domain: str

    @property
    def is_null(self) -> bool:
        return not self.local_part and not self.domain

    @property
    def mailbox(self) -> str:
        """``local@domain``, the local part alone for <Postmaster>, "" for <>."""
        if not self.domain:
            return self.local_part
        return f"{self.local_part}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed command line. ``params`` are the ESMTP parameters in order,
    keywords upper-cased, values byte-exact."""

    verb: str
    argument: str | None
    path: Path | None
    params: tuple[tuple[str, str | None], ...]
    chunk_size: int | None
    last: bool


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply line; ``last`` is False on a continuation line."""

    code: int
    last: bool
    status: str | None
    text: str


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


def _syntax(offset: int, text: str) -> SMTPSyntaxError:
    return SMTPSyntaxError(501, "5.5.4", text, offset)


_CONTROL = frozenset([*range(0x20), 0x7F])


def parse_command(
    line: bytes, *, smtputf8: bool = False, max_length: int = DEFAULT_MAX_LINE
) -> Command:
    """Parse one command line (with or without CRLF); raise SMTPSyntaxError
    carrying the reply to send when it is not valid."""
    line = as_bytes(line, "line")
    if len(line) > max_length:
        raise SMTPSyntaxError(500, "5.5.2", "Line too long", max_length)
    line = _strip_eol(line)
    if not _CONTROL.isdisjoint(line):
        i = next(i for i, b in enumerate(line) if b in _CONTROL)
        raise SMTPSyntaxError(500, "5.5.2", "Control character in command", i)
    if smtputf8:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SMTPSyntaxError(500, "5.5.2", "Invalid UTF-8 in command", e.start) from None
    vend = line.find(b" ")
    if vend < 0:
        vend = len(line)
    try:
        verb = line[:vend].decode("ascii").upper()
    except UnicodeDecodeError:
        verb = ""
    if verb not in _VERB_SET or not line[:vend].isalpha():
        raise SMTPSyntaxError(500, "5.5.1", "Command not recognized", 0)
    astart = vend
    while astart < len(line) and line[astart] == 0x20:
        astart += 1
    aend = len(line)
    while aend > astart and line[aend - 1] == 0x20:
        aend -= 1
    arg = line[astart:aend]
    if not smtputf8 and verb not in ("MAIL", "RCPT") and not arg.isascii():
        i = next(i for i, b in enumerate(arg) if b >= 0x80)
        raise SMTPSyntaxError(500, "5.5.2", "Non-ASCII characters in command", astart + i)
    argument = arg.decode("utf-8", "replace") if arg else None
    path: Path | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    chunk_size: int | None = None
    last = False
    if verb in ("EHLO", "HELO") and not arg:
        raise _syntax(vend, f"Syntax: {verb} hostname")
    if verb in ("VRFY", "EXPN") and not arg:
        raise _syntax(vend, f"Syntax: {verb} address")
    if verb == "AUTH" and not arg:
        raise _syntax(vend, "Syntax: AUTH mechanism [initial-response]")
    if verb in ("DATA", "RSET", "QUIT", "STARTTLS") and arg:
        raise _syntax(astart, f"Syntax: {verb} (no arguments)")
    if verb in ("MAIL", "RCPT"):
        path, params = _parse_mail_rcpt(verb == "MAIL", line, astart, aend, smtputf8)
    elif verb == "BDAT":
        chunk_size, last = _parse_bdat(arg, astart)
    return Command(verb, argument, path, params, chunk_size, last)


_DIGITS = frozenset(b"0123456789")


def _parse_bdat(arg: bytes, astart: int) -> tuple[int, bool]:
    err = _syntax(astart, "Syntax: BDAT chunk-size [LAST]")
    size, sep, rest = arg.partition(b" ")
    if not size or len(size) > 19 or not _DIGITS.issuperset(size):
        raise err
    if not sep:
        return int(size), False
    if rest.upper() == b"LAST":
        return int(size), True
    raise err


class _Role:
    __slots__ = ("mail", "name", "status")

    def __init__(self, mail: bool) -> None:
        self.mail = mail
        self.status = "5.1.7" if mail else "5.1.3"
        self.name = "sender" if mail else "recipient"

    def bad(self, offset: int, what: str) -> SMTPSyntaxError:
        return SMTPSyntaxError(553, self.status, f"Bad {self.name} address syntax: {what}", offset)


def _parse_mail_rcpt(
    mail: bool, s: bytes, astart: int, aend: int, smtputf8: bool
) -> tuple[Path, tuple[tuple[str, str | None], ...]]:
    role = _Role(mail)
    kw, usage = (b"FROM:", "Syntax: MAIL FROM:<address>") if mail else (
        b"TO:", "Syntax: RCPT TO:<address>")  # fmt: skip
    s = s[:aend]
    if len(s) < astart + len(kw) or s[astart : astart + len(kw)].upper() != kw:
        raise _syntax(astart, usage)
    p = astart + len(kw)
    while p < aend and s[p] == 0x20:
        p += 1
    if p >= aend or s[p] != 0x3C:  # '<'
        raise _syntax(p, usage)
    path, end = _parse_path(s, p, role, smtputf8)
    params: tuple[tuple[str, str | None], ...] = ()
    if end < aend:
        if s[end] != 0x20:
            raise _syntax(end, "Syntax error after the address")
        params = _parse_params(s, end, smtputf8)
    return path, params


_ATEXT = frozenset(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
)
_LETDIG = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def _is_atext(b: int, smtputf8: bool) -> bool:
    return b in _ATEXT or (smtputf8 and b >= 0x80)


def _is_letdig(b: int, smtputf8: bool) -> bool:
    return b in _LETDIG or (smtputf8 and b >= 0x80)


def _path_extent(s: bytes, start: int) -> int:
    quoted = False
    i = start
    n = len(s)
    while i < n:
        c = s[i]
        if c == 0x5C and quoted:
            i += 1
        elif c == 0x22:
            quoted = not quoted
        elif c == 0x3E and not quoted:
            return i + 1
        i += 1
    return n


def _parse_path(s: bytes, start: int, role: _Role, smtputf8: bool) -> tuple[Path, int]:
    n = len(s)
    if not smtputf8:
        extent = s[start : _path_extent(s, start)]
        if not extent.isascii():
            i = next(i for i, b in enumerate(extent) if b >= 0x80)
            raise SMTPSyntaxError(
                553, "5.6.7", f"Non-ASCII {role.name} address requires SMTPUTF8", start + i
            )
    p = start + 1
    if p < n and s[p] == 0x3E:
        if role.mail:
            return Path("", ""), p + 1
        raise role.bad(p, "empty recipient")
    if (
        not role.mail
        and n >= p + 11
        and s[p : p + 10].lower() == b"postmaster"
        and s[p + 10] == 0x3E
    ):
        return Path(s[p : p + 10].decode("ascii"), ""), p + 11
    if p < n and s[p] == 0x40:  # '@': source route, accepted and dropped
        while True:
            p = _parse_domain(s, p + 1, role, smtputf8)
            if p < n and s[p] == 0x2C:
                p += 1
                if p >= n or s[p] != 0x40:
                    raise role.bad(p, "bad source route")
            elif p < n and s[p] == 0x3A:
                p += 1
                break
            else:
                raise role.bad(p, "bad source route")
    lstart = p
    if p < n and s[p] == 0x22:
        p = _parse_quoted(s, p, role, smtputf8)
    else:
        p = _parse_dot_string(s, p, role, smtputf8)
    lend = p
    if p >= n or s[p] != 0x40:
        raise role.bad(p, "expected @domain after the local part")
    dstart = p + 1
    if dstart < n and s[dstart] == 0x5B:
        p = _parse_address_literal(s, dstart, role)
    else:
        p = _parse_domain(s, dstart, role, smtputf8)
    dend = p
    if p >= n or s[p] != 0x3E:
        raise role.bad(p, "expected > at the end of the address")
    end = p + 1
    if end - start > MAX_PATH:
        raise SMTPSyntaxError(501, role.status, "Path too long", start)
    if lend - lstart > MAX_LOCAL_PART:
        raise SMTPSyntaxError(501, role.status, "Local part too long", lstart)
    if dend - dstart > MAX_DOMAIN:
        raise SMTPSyntaxError(501, role.status, "Domain too long", dstart)
    return (
        Path(s[lstart:lend].decode("utf-8", "replace"), s[dstart:dend].decode("utf-8", "replace")),
        end,
    )


def _parse_dot_string(s: bytes, p: int, role: _Role, smtputf8: bool) -> int:
    n = len(s)
    while True:
        a = p
        while p < n and _is_atext(s[p], smtputf8):
            p += 1
        if p == a:
            raise role.bad(p, "invalid character in the local part")
        if p < n and s[p] == 0x2E:
            p += 1
        else:
            return p


def _parse_quoted(s: bytes, p: int, role: _Role, smtputf8: bool) -> int:
    n = len(s)
    p += 1
    while p < n:
        c = s[p]
        if c == 0x22:
            return p + 1
        if c == 0x5C:
            if p + 1 < n and 32 <= s[p + 1] <= 126:
                p += 2
            else:
                raise role.bad(p, "invalid quoted pair in the local part")
        elif 32 <= c <= 126 or (smtputf8 and c >= 0x80):
            p += 1
        else:
            raise role.bad(p, "invalid character in the quoted local part")
    raise role.bad(p, "unterminated quoted local part")


def _parse_domain(s: bytes, p: int, role: _Role, smtputf8: bool) -> int:
    n = len(s)
    while True:
        a = p
        if p >= n or not _is_letdig(s[p], smtputf8):
            raise role.bad(p, "invalid domain")
        while p < n and (_is_letdig(s[p], smtputf8) or s[p] == 0x2D):
            p += 1
        if s[p - 1] == 0x2D:
            raise role.bad(p - 1, "domain label ends with a hyphen")
        if p - a > 63:
            raise role.bad(a, "domain label longer than 63 octets")
        if p < n and s[p] == 0x2E:
            p += 1
        else:
            return p


def _parse_address_literal(s: bytes, p: int, role: _Role) -> int:
    close = s.find(b"]", p)
    if close < 0:
        raise role.bad(p, "unterminated address literal")
    body = s[p + 1 : close]
    if len(body) >= 5 and body[:5].upper() == b"IPV6:":
        ok = parse_ipv6(body[5:]) is not None
    elif b":" in body:
        raise role.bad(p, "unsupported address literal")
    else:
        ok = _parse_snum_ipv4(body)
    if not ok:
        raise role.bad(p, "invalid address literal")
    return close + 1


def _parse_snum_ipv4(s: bytes) -> bool:
    parts = s.split(b".")
    return len(parts) == 4 and all(
        p and len(p) <= 3 and _DIGITS.issuperset(p) and int(p) <= 255 for p in parts
    )


_KEYCHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-")
_VALUECHARS = frozenset(b for b in range(33, 127) if b != 0x3D)


def _parse_params(s: bytes, p: int, smtputf8: bool) -> tuple[tuple[str, str | None], ...]:
    out: list[tuple[str, str | None]] = []
    n = len(s)
    while True:
        while p < n and s[p] == 0x20:
            p += 1
        if p >= n:
            return tuple(out)
        k = p
        if s[p] not in _LETDIG:
            raise _syntax(p, "Syntax error in parameters")
        while p < n and s[p] in _KEYCHARS:
            p += 1
        keyword = s[k:p].decode("ascii").upper()
        value = None
        if p < n and s[p] == 0x3D:
            p += 1
            v = p
            while p < n and s[p] != 0x20:
                b = s[p]
                if not (b in _VALUECHARS or (smtputf8 and b >= 0x80)):
                    raise _syntax(p, f"Syntax error in parameter {keyword}")
                p += 1
            if p == v:
                raise _syntax(p, f"Syntax error in parameter {keyword}")
            value = s[v:p].decode("utf-8", "replace")
        if p < n and s[p] != 0x20:
            raise _syntax(p, "Syntax error in parameters")
        out.append((keyword, value))


def parse_reply(line: bytes) -> Reply:
    """Parse one reply line; an RFC 3463 status code is split off the text."""
    line = _strip_eol(as_bytes(line, "line"))
    if len(line) < 3:
        raise ReplySyntaxError("reply shorter than its three-digit code", len(line))
    for i, (lo, hi) in enumerate(((0x32, 0x35), (0x30, 0x35), (0x30, 0x39))):
        if not lo <= line[i] <= hi:
            raise ReplySyntaxError("invalid reply code", i)
    code = int(line[:3])
    if len(line) == 3:
        return Reply(code, True, None, "")
    sep = line[3]
    if sep == 0x20:
        last = True
    elif sep == 0x2D:
        last = False
    else:
        raise ReplySyntaxError("expected a space or hyphen after the reply code", 3)
    text = line[4:]
    for i, b in enumerate(text):
        if (b < 0x20 and b != 0x09) or b == 0x7F:
            raise ReplySyntaxError("control character in reply text", 4 + i)
    status = None
    n = _enhanced_status(text, line[0])
    if n is not None:
        status = text[:n].decode("ascii")
        text = text[n + 1 :] if len(text) > n else text[n:]
    return Reply(code, last, status, text.decode("utf-8", "replace"))


def _enhanced_status(text: bytes, cls: int) -> int | None:
    if cls not in (0x32, 0x34, 0x35) or len(text) < 5 or text[0] != cls or text[1] != 0x2E:
        return None
    p = 2
    for part in range(2):
        a = p
        while p < len(text) and 0x30 <= text[p] <= 0x39 and p - a < 4:
            p += 1
        if p == a or p - a > 3:
            return None
        if part == 0:
            if p >= len(text) or text[p] != 0x2E:
                return None
            p += 1
    if p == len(text) or text[p] == 0x20:
        return p
    return None
