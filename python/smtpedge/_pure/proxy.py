"""PROXY protocol header parser and builder (twin of
rust/smtpedge-core/src/proxy.rs; same results, same errors).

Version 1:  "PROXY" SP ( "TCP4" | "TCP6" ) SP src SP dst SP sport SP dport CRLF
          | "PROXY" SP "UNKNOWN" [ SP <anything but CR/LF> ] CRLF
Version 2:  12-byte signature, ver_cmd, fam, 16-bit length, addresses, TLVs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from smtpedge._pure._args import as_bytes
from smtpedge._pure.crc32c import crc32c
from smtpedge._pure.ip import format_ip, parse_ip, parse_ipv4, parse_ipv6
from smtpedge.errors import IncompleteHeader, ProxyProtocolError

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX_LENGTH = 107
MIN_LENGTH = 15
DEFAULT_MAX_LENGTH = 4096

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_SUBTYPE_SSL_GROUP = 0x26
PP2_SUBTYPE_SSL_SIG_SCHEME = 0x27
PP2_SUBTYPE_SSL_CLIENT_CERT = 0x28
PP2_TYPE_NETNS = 0x30

_ASCII_SUBTYPES = frozenset(
    (
        PP2_SUBTYPE_SSL_VERSION,
        PP2_SUBTYPE_SSL_CIPHER,
        PP2_SUBTYPE_SSL_SIG_ALG,
        PP2_SUBTYPE_SSL_KEY_ALG,
        PP2_SUBTYPE_SSL_GROUP,
        PP2_SUBTYPE_SSL_SIG_SCHEME,
    )
)

Endpoint = tuple[str, int | None]


def _first(tlvs: tuple[tuple[int, bytes], ...], kind: int) -> bytes | None:
    for t, v in tlvs:
        if t == kind:
            return v
    return None


@dataclass(frozen=True, slots=True)
class SSLInfo:
    """The PP2_TYPE_SSL TLV: client flags, verify result and sub-TLVs."""

    client: int
    verify: int
    tlvs: tuple[tuple[int, bytes], ...]

    def _text(self, kind: int) -> str | None:
        v = _first(self.tlvs, kind)
        return None if v is None else v.decode("utf-8")

    @property
    def version(self) -> str | None:
        return self._text(PP2_SUBTYPE_SSL_VERSION)

    @property
    def cn(self) -> str | None:
        return self._text(PP2_SUBTYPE_SSL_CN)

    @property
    def cipher(self) -> str | None:
        return self._text(PP2_SUBTYPE_SSL_CIPHER)

    @property
    def sig_alg(self) -> str | None:
        return self._text(PP2_SUBTYPE_SSL_SIG_ALG)

    @property
    def key_alg(self) -> str | None:
        return self._text(PP2_SUBTYPE_SSL_KEY_ALG)

    @property
    def group(self) -> str | None:
        return self._text(PP2_SUBTYPE_SSL_GROUP)

    @property
    def sig_scheme(self) -> str | None:
        return self._text(PP2_SUBTYPE_SSL_SIG_SCHEME)

    @property
    def client_cert(self) -> bytes | None:
        return _first(self.tlvs, PP2_SUBTYPE_SSL_CLIENT_CERT)


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A parsed PROXY header. ``source``/``destination`` are ``(ip, port)``,
    ``(path, None)`` for UNIX sockets, or None when the real endpoints apply
    (LOCAL, UNSPEC, v1 UNKNOWN)."""

    version: int
    command: str
    family: str
    protocol: str
    source: Endpoint | None
    destination: Endpoint | None
    tlvs: tuple[tuple[int, bytes], ...]
    crc32c: bool
    consumed: int

    @property
    def alpn(self) -> bytes | None:
        return _first(self.tlvs, PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        v = _first(self.tlvs, PP2_TYPE_AUTHORITY)
        return None if v is None else v.decode("utf-8")

    @property
    def unique_id(self) -> bytes | None:
        return _first(self.tlvs, PP2_TYPE_UNIQUE_ID)

    @property
    def netns(self) -> str | None:
        v = _first(self.tlvs, PP2_TYPE_NETNS)
        return None if v is None else v.decode("ascii")

    @property
    def ssl(self) -> SSLInfo | None:
        v = _first(self.tlvs, PP2_TYPE_SSL)
        return None if v is None else parse_ssl(v)


def parse_header(data: bytes | bytearray, *, max_length: int = DEFAULT_MAX_LENGTH) -> ProxyHeader:
    """Parse one PROXY header (v1 or v2) at the start of ``data``.

    Raises IncompleteHeader when ``data`` is a valid prefix, ProxyProtocolError
    when it cannot be one. Never reads past the header: see ``consumed``.
    """
    data = as_bytes(data, "data")
    if not data:
        raise IncompleteHeader(MIN_LENGTH)
    first = data[0]
    if first == 0x0D:
        return _parse_v2(data, max_length)
    if first == 0x50:  # 'P'
        return _parse_v1(data)
    raise ProxyProtocolError("not a PROXY protocol header", 0)


# --- version 1 ---------------------------------------------------------------


def _parse_v1(data: bytes) -> ProxyHeader:
    window = data[:V1_MAX_LENGTH]
    cr = window.find(b"\r")
    lf = window.find(b"\n")
    ends = [p for p in (cr, lf) if p >= 0]
    end = min(ends) if ends else None
    line = data[:end] if end is not None else window
    parsed = _parse_v1_line(line, end is not None)
    if end is None:
        if len(window) == V1_MAX_LENGTH:
            raise ProxyProtocolError("v1 header longer than 107 bytes", V1_MAX_LENGTH)
        raise IncompleteHeader(max(MIN_LENGTH - len(data), 1))
    p = end
    if data[p] == 0x0A:
        raise ProxyProtocolError("v1 header ends in a bare LF", p)
    if p + 2 > V1_MAX_LENGTH:
        raise ProxyProtocolError("v1 header longer than 107 bytes", V1_MAX_LENGTH)
    if p + 1 == len(data):
        raise IncompleteHeader(1)
    if data[p + 1] != 0x0A:
        raise ProxyProtocolError("v1 header has a CR not followed by LF", p + 1)
    assert parsed is not None
    family, endpoints = parsed
    source, destination = endpoints if endpoints is not None else (None, None)
    return ProxyHeader(
        1,
        "PROXY",
        family,
        "UNSPEC" if family == "UNSPEC" else "STREAM",
        source,
        destination,
        (),
        False,
        p + 2,
    )


_PRINTABLE = frozenset(range(0x20, 0x7F))


def _parse_v1_line(
    line: bytes, complete: bool
) -> tuple[str, tuple[Endpoint, Endpoint] | None] | None:
    prefix = b"PROXY "
    for i in range(min(len(line), len(prefix))):
        if line[i] != prefix[i]:
            raise ProxyProtocolError("not a PROXY protocol header", i)
    if not _PRINTABLE.issuperset(line):
        i = next(i for i, b in enumerate(line) if b not in _PRINTABLE)
        raise ProxyProtocolError("non-printable byte in the v1 header", i)
    if len(line) < len(prefix):
        if complete:
            raise ProxyProtocolError("v1 header ends before its protocol", len(line))
        return None
    fields: list[tuple[int, bytes]] = []
    start = len(prefix)
    for part in line[start:].split(b" "):
        fields.append((start, part))
        start += len(part) + 1
    judged = len(fields) if complete else len(fields) - 1
    if judged == 0:
        return None
    proto = fields[0][1]
    if proto == b"TCP4":
        family = "INET"
    elif proto == b"TCP6":
        family = "INET6"
    elif proto == b"UNKNOWN":
        return ("UNSPEC", None) if complete else None
    else:
        raise ProxyProtocolError("unknown v1 protocol", fields[0][0])
    ips: list[str] = ["", ""]
    ports = [0, 0]
    for n in range(1, min(judged, 5)):
        off, field = fields[n]
        if not field:
            raise ProxyProtocolError(
                "empty field in the v1 header (a double or trailing space)", off
            )
        if n in (1, 2):
            raw = parse_ipv4(field) if family == "INET" else parse_ipv6(field)
            if raw is None:
                kind = "IPv4" if family == "INET" else "IPv6"
                raise ProxyProtocolError(f"invalid {kind} address in the v1 header", off)
            ips[n - 1] = format_ip(raw)
        else:
            port = _parse_port(field)
            if port is None:
                raise ProxyProtocolError("invalid port in the v1 header", off)
            ports[n - 3] = port
    if len(fields) > 5:
        off, field = fields[5]
        if not field and judged > 5:
            raise ProxyProtocolError(
                "empty field in the v1 header (a double or trailing space)", off
            )
        raise ProxyProtocolError("too many fields in the v1 header", off - 1)
    if not complete:
        return None
    if len(fields) < 5:
        raise ProxyProtocolError("too few fields in the v1 header", len(line))
    return family, ((ips[0], ports[0]), (ips[1], ports[1]))


_DIGITS = frozenset(b"0123456789")


def _parse_port(s: bytes) -> int | None:
    if not s or len(s) > 5 or not _DIGITS.issuperset(s):
        return None
    if len(s) > 1 and s[0] == 0x30:
        return None
    v = int(s)
    return v if v <= 65535 else None


# --- version 2 ---------------------------------------------------------------

_FAMILIES = ("UNSPEC", "INET", "INET6", "UNIX")
_PROTOCOLS = ("UNSPEC", "STREAM", "DGRAM")
_ADDR_LEN = {"INET": 12, "INET6": 36, "UNIX": 216}


def _parse_v2(data: bytes, max_length: int) -> ProxyHeader:
    n = len(data)
    for i in range(min(n, 12)):
        if data[i] != V2_SIGNATURE[i]:
            raise ProxyProtocolError("invalid v2 signature", i)
    if n < 13:
        raise IncompleteHeader(16 - n)
    version = data[12] >> 4
    if version != 2:
        raise ProxyProtocolError(f"unsupported v2 version {version}", 12)
    cmd = data[12] & 0x0F
    if cmd > 1:
        raise ProxyProtocolError(f"unknown v2 command {cmd}", 12)
    command = "PROXY" if cmd == 1 else "LOCAL"
    if n < 14:
        raise IncompleteHeader(16 - n)
    fam = data[13] >> 4
    if fam > 3:
        raise ProxyProtocolError(f"unknown v2 address family {fam}", 13)
    proto = data[13] & 0x0F
    if proto > 2:
        raise ProxyProtocolError(f"unknown v2 transport protocol {proto}", 13)
    family, protocol = _FAMILIES[fam], _PROTOCOLS[proto]
    if n < 16:
        raise IncompleteHeader(16 - n)
    total = 16 + (data[14] << 8 | data[15])
    if total > max_length:
        raise ProxyProtocolError(
            f"v2 header of {total} bytes exceeds the limit of {max_length}", 14
        )
    if n < total:
        raise IncompleteHeader(total - n)
    if command == "LOCAL" or family == "UNSPEC":
        return ProxyHeader(2, command, family, protocol, None, None, (), False, total)
    addr_len = _ADDR_LEN[family]
    if total - 16 < addr_len:
        raise ProxyProtocolError(
            f"v2 {family} address block needs {addr_len} bytes, the header has {total - 16}",
            16,
        )
    a = data[16 : 16 + addr_len]
    source: Endpoint
    destination: Endpoint
    if family == "INET":
        source = (format_ip(a[0:4]), a[8] << 8 | a[9])
        destination = (format_ip(a[4:8]), a[10] << 8 | a[11])
    elif family == "INET6":
        source = (format_ip(a[0:16]), a[32] << 8 | a[33])
        destination = (format_ip(a[16:32]), a[34] << 8 | a[35])
    else:
        source = (_unix_path(a[0:108], 16), None)
        destination = (_unix_path(a[108:216], 16 + 108), None)
    crc_at: list[int] = []

    def check(off: int, kind: int, value: bytes) -> None:
        _check_tlv(data, off, kind, value, crc_at)

    tlvs = _parse_tlvs(data, 16 + addr_len, total, check)
    verified = False
    if crc_at:
        off = crc_at[0]
        want = int.from_bytes(data[off + 3 : off + 7], "big")
        if crc32c(data[: off + 3] + b"\0\0\0\0" + data[off + 7 : total]) != want:
            raise ProxyProtocolError("CRC32C checksum mismatch", off)
        verified = True
    return ProxyHeader(2, command, family, protocol, source, destination, tlvs, verified, total)


def _unix_path(raw: bytes, offset: int) -> str:
    nul = raw.find(b"\0")
    if nul >= 0:
        raw = raw[:nul]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyProtocolError("UNIX socket path is not UTF-8", offset) from None


def _parse_tlvs(
    data: bytes, start: int, end: int, check: Callable[[int, int, bytes], None]
) -> tuple[tuple[int, bytes], ...]:
    out = []
    pos = start
    while pos < end:
        if end - pos < 3:
            raise ProxyProtocolError("truncated TLV", pos)
        kind = data[pos]
        length = data[pos + 1] << 8 | data[pos + 2]
        if pos + 3 + length > end:
            raise ProxyProtocolError(
                f"TLV type 0x{kind:02x} of length {length} overruns its block", pos
            )
        value = data[pos + 3 : pos + 3 + length]
        check(pos, kind, value)
        out.append((kind, value))
        pos += 3 + length
    return tuple(out)


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_tlv(data: bytes, off: int, kind: int, value: bytes, crc_at: list[int]) -> None:
    if kind == PP2_TYPE_AUTHORITY and not _is_utf8(value):
        raise ProxyProtocolError("AUTHORITY TLV is not UTF-8", off)
    if kind == PP2_TYPE_CRC32C:
        if len(value) != 4:
            raise ProxyProtocolError("CRC32C TLV is not 4 bytes long", off)
        if crc_at:
            raise ProxyProtocolError("duplicate CRC32C TLV", off)
        crc_at.append(off)
    elif kind == PP2_TYPE_UNIQUE_ID and len(value) > 128:
        raise ProxyProtocolError("UNIQUE_ID TLV longer than 128 bytes", off)
    elif kind == PP2_TYPE_NETNS and not value.isascii():
        raise ProxyProtocolError("NETNS TLV is not US-ASCII", off)
    elif kind == PP2_TYPE_SSL:
        if len(value) < 5:
            raise ProxyProtocolError("SSL TLV shorter than its 5-byte fixed part", off)
        # Sub-TLVs follow the 3-byte TLV head and the 5-byte fixed part.
        _parse_tlvs(data, off + 8, off + 3 + len(value), _check_ssl_subtlv)


def _check_ssl_subtlv(off: int, kind: int, value: bytes) -> None:
    if kind == PP2_SUBTYPE_SSL_CN and not _is_utf8(value):
        raise ProxyProtocolError("SSL CN sub-TLV is not UTF-8", off)
    if kind in _ASCII_SUBTYPES and not value.isascii():
        raise ProxyProtocolError(f"SSL sub-TLV 0x{kind:02x} is not US-ASCII", off)


def parse_ssl(value: bytes) -> SSLInfo:
    """Decode the value of a PP2_TYPE_SSL TLV."""
    if len(value) < 5:
        raise ProxyProtocolError("SSL TLV shorter than its 5-byte fixed part", 0)
    tlvs = _parse_tlvs(value, 5, len(value), _check_ssl_subtlv)
    return SSLInfo(value[0], int.from_bytes(value[1:5], "big"), tlvs)


# --- building ----------------------------------------------------------------


def _endpoint(address: str, port: int | None) -> tuple[str, bytes | str, int | None]:
    """(family, raw address or path, port) of a caller's endpoint."""
    if port is None:
        return ("UNIX", address, None)
    raw = parse_ip(address.encode("utf-8", "surrogatepass"))
    if raw is None:
        raise ValueError(f"invalid IP address '{address}'")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return ("INET" if len(raw) == 4 else "INET6", raw, port)


def build_header(
    version: int = 2,
    command: str = "PROXY",
    source: Endpoint | None = None,
    destination: Endpoint | None = None,
    *,
    protocol: str = "STREAM",
    tlvs: Sequence[tuple[int, bytes]] = (),
    crc32c: bool = False,
) -> bytes:
    """Build a v1 or v2 header. Endpoints are ``(ip, port)`` or ``(path, None)``;
    with neither, v1 gives "PROXY UNKNOWN" and v2 an UNSPEC header. ``crc32c``
    appends a checksum TLV after ``tlvs``."""
    if command not in ("PROXY", "LOCAL"):
        raise ValueError(f"command must be 'PROXY' or 'LOCAL', not '{command}'")
    if protocol not in _PROTOCOLS:
        raise ValueError(f"protocol must be 'UNSPEC', 'STREAM' or 'DGRAM', not '{protocol}'")
    if (source is None) != (destination is None):
        raise ValueError("give both source and destination, or neither")
    tlv_list = [(int(k), bytes(v)) for k, v in tlvs]
    for k, _ in tlv_list:
        if not 0 <= k <= 255:
            raise ValueError(f"TLV type {k} is out of range 0-255")
    ends = None
    family = "UNSPEC"
    if source is not None and destination is not None:
        s = _endpoint(source[0], source[1])
        d = _endpoint(destination[0], destination[1])
        if s[0] != d[0]:
            raise ValueError("source and destination are of different address families")
        family = s[0]
        ends = (s, d)
    if version == 1:
        return _build_v1(command, ends, family, protocol, tlv_list, crc32c)
    if version == 2:
        return _build_v2(command, ends, family, protocol, tlv_list, crc32c)
    raise ValueError(f"version must be 1 or 2, not {version}")


_Ends = tuple[tuple[str, bytes | str, int | None], tuple[str, bytes | str, int | None]]


def _build_v1(
    command: str,
    ends: _Ends | None,
    family: str,
    protocol: str,
    tlvs: list[tuple[int, bytes]],
    crc: bool,
) -> bytes:
    if command != "PROXY":
        raise ValueError("version 1 has no LOCAL command")
    if tlvs or crc:
        raise ValueError("version 1 carries no TLVs")
    if ends is None:
        return b"PROXY UNKNOWN\r\n"
    if protocol != "STREAM":
        raise ValueError("version 1 carries only STREAM (TCP) connections")
    if family not in ("INET", "INET6"):
        raise ValueError("version 1 carries only TCP over IPv4 or IPv6")
    (_, sip, sport), (_, dip, dport) = ends
    assert isinstance(sip, bytes) and isinstance(dip, bytes)
    proto = "TCP4" if family == "INET" else "TCP6"
    return f"PROXY {proto} {format_ip(sip)} {format_ip(dip)} {sport} {dport}\r\n".encode()


def _build_v2(
    command: str,
    ends: _Ends | None,
    family: str,
    protocol: str,
    tlvs: list[tuple[int, bytes]],
    crc: bool,
) -> bytes:
    out = bytearray(V2_SIGNATURE)
    out.append(0x20 if command == "LOCAL" else 0x21)
    if ends is None:
        out.append(0x00)
    else:
        out.append(_FAMILIES.index(family) << 4 | _PROTOCOLS.index(protocol))
    out += b"\0\0"
    if ends is not None:
        (_, s, sport), (_, d, dport) = ends
        if family == "UNIX":
            for path in (s, d):
                assert isinstance(path, str)
                b = path.encode("utf-8", "surrogatepass")
                if len(b) > 107 or b"\0" in b:
                    raise ValueError("a UNIX socket path must be at most 107 bytes with no NUL")
                out += b.ljust(108, b"\0")
        else:
            assert isinstance(s, bytes) and isinstance(d, bytes)
            assert sport is not None and dport is not None
            out += s + d + sport.to_bytes(2, "big") + dport.to_bytes(2, "big")
    for kind, value in tlvs:
        _push_tlv(out, kind, value)
    crc_at = None
    if crc:
        crc_at = len(out)
        _push_tlv(out, PP2_TYPE_CRC32C, b"\0\0\0\0")
    length = len(out) - 16
    if length > 0xFFFF:
        raise ValueError(f"v2 header body of {length} bytes exceeds 65535")
    out[14:16] = length.to_bytes(2, "big")
    if crc_at is not None:
        out[crc_at + 3 : crc_at + 7] = crc32c(bytes(out)).to_bytes(4, "big")
    return bytes(out)


def _push_tlv(out: bytearray, kind: int, value: bytes) -> None:
    if len(value) > 0xFFFF:
        raise ValueError(f"TLV type 0x{kind:02x} value of {len(value)} bytes exceeds 65535")
    out.append(kind)
    out += len(value).to_bytes(2, "big")
    out += value
