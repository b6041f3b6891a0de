"""Certificate name checking, RFC 6125 section 6.4 with Exim's wildcard rule
(twin of rust/smtpedge-core/src/certnames.rs).

Names are compared as A-labels: U-labels are converted with IDNA 2008 by
``smtpedge._idna`` first, the same code for both backends.
"""

from __future__ import annotations

from collections.abc import Sequence

from smtpedge._idna import to_ascii
from smtpedge._pure._args import as_str
from smtpedge._pure.ip import parse_ip

_PRINTABLE = frozenset(range(0x21, 0x7F))


def _labels(name: str) -> list[str] | None:
    if not name.isascii() or not _PRINTABLE.issuperset(name.encode("ascii")):
        return None
    if name.endswith("."):
        name = name[:-1]
    if not name:
        return None
    out = name.lower().split(".")
    if "" in out:
        return None
    return out


def _reference_ip(reference: str) -> bytes | None:
    s = reference
    if s.startswith("[") and s.endswith("]") and len(s) >= 2:
        s = s[1:-1]
    try:
        raw = s.encode("ascii")
    except UnicodeEncodeError:
        return None
    return parse_ip(raw)


def _match_ascii(pattern: str, hostname: str) -> bool:
    p = _labels(pattern)
    h = _labels(hostname)
    if p is None or h is None:
        return False
    if any("*" in label for label in h) or _reference_ip(hostname) is not None:
        return False
    if len(p) != len(h):
        return False
    if p[0] == "*":
        if len(p) < 3 or any("*" in label for label in p[1:]) or h[0].startswith("xn--"):
            return False
        return p[1:] == h[1:]
    if any("*" in label for label in p):
        return False
    return p == h


def match_hostname(pattern: str, hostname: str) -> bool:
    """Whether the presented identifier ``pattern`` (SAN dNSName or CN) matches
    the reference ``hostname``: case-insensitive, one trailing dot ignored, a
    ``*`` only as the whole left-most label of a 3+ label name, never over an
    ``xn--`` label."""
    pattern = as_str(pattern, "pattern")
    hostname = as_str(hostname, "hostname")
    if not pattern.isascii():
        converted = to_ascii(pattern)
        if converted is None:
            return False
        pattern = converted
    if not hostname.isascii():
        converted = to_ascii(hostname)
        if converted is None:
            return False
        hostname = converted
    return _match_ascii(pattern, hostname)


def _ip_bytes(value: str | bytes) -> bytes | None:
    if isinstance(value, bytes):
        return value if len(value) in (4, 16) else None
    try:
        raw = value.encode("ascii")
    except UnicodeEncodeError:
        return None
    return parse_ip(raw)


def verify_names(
    dns_names: Sequence[str],
    common_names: Sequence[str],
    ip_addresses: Sequence[str | bytes],
    reference: str,
) -> bool:
    """Whether a certificate's identifiers are valid for ``reference``: an IP
    reference only against IP SANs (text or 4/16 raw bytes); a name against
    the SAN dNSNames, or the common names only when there is no dNSName."""
    reference = as_str(reference, "reference")
    for seq, label in (
        (dns_names, "dns_names"),
        (common_names, "common_names"),
        (ip_addresses, "ip_addresses"),
    ):
        if isinstance(seq, str | bytes):
            raise TypeError(f"argument '{label}': expected a sequence, not {type(seq).__name__}")
    dns_names = [as_str(n, "dns_names") for n in dns_names]
    common_names = [as_str(n, "common_names") for n in common_names]
    for a in ip_addresses:
        if not isinstance(a, str | bytes):
            raise TypeError("ip_addresses must hold str or bytes")
    if reference.isascii():
        ref_ip = _reference_ip(reference)
        if ref_ip is not None:
            return any(_ip_bytes(a) == ref_ip for a in ip_addresses)
    names = dns_names if dns_names else common_names
    return any(match_hostname(p, reference) for p in names)
