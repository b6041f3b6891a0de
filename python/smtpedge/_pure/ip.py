"""Strict textual IP addresses (twin of rust/smtpedge-core/src/ip.rs).

IPv4: dotted quad, no leading zeros. IPv6: RFC 4291 section 2.2 text, no zone.
Output is RFC 5952 text, IPv4-mapped addresses as ::ffff:a.b.c.d.
"""

from __future__ import annotations

_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def parse_ipv4(s: bytes) -> bytes | None:
    parts = s.split(b".")
    if len(parts) != 4:
        return None
    out = bytearray(4)
    for i, part in enumerate(parts):
        if not part or len(part) > 3 or not _DIGITS.issuperset(part):
            return None
        if len(part) > 1 and part[0] == 0x30:
            return None
        v = int(part)
        if v > 255:
            return None
        out[i] = v
    return bytes(out)


def _hex_group(tok: bytes) -> int | None:
    if not tok or len(tok) > 4 or not _HEX.issuperset(tok):
        return None
    return int(tok, 16)


def parse_ipv6(s: bytes) -> bytes | None:
    n = len(s)
    if n < 2:
        return None
    words: list[int] = []
    gap: int | None = None
    i = 0
    if s[0] == 0x3A:  # ':'
        if s[1] != 0x3A:
            return None
        gap = 0
        i = 2
        if i == n:
            return bytes(16)
    while True:
        j = s.find(b":", i)
        if j < 0:
            j = n
        tok = s[i:j]
        if b"." in tok:
            if j != n or len(words) > 6:
                return None
            v4 = parse_ipv4(tok)
            if v4 is None:
                return None
            words.append(v4[0] << 8 | v4[1])
            words.append(v4[2] << 8 | v4[3])
            break
        if len(words) == 8:
            return None
        w = _hex_group(tok)
        if w is None:
            return None
        words.append(w)
        if j == n:
            break
        if j + 1 < n and s[j + 1] == 0x3A:
            if gap is not None:
                return None
            gap = len(words)
            i = j + 2
            if i == n:
                break
        else:
            i = j + 1
            if i == n:
                return None
    count = len(words)
    if gap is not None:
        if count >= 8:
            return None
        full = words[:gap] + [0] * (8 - count) + words[gap:]
    elif count != 8:
        return None
    else:
        full = words
    return b"".join(w.to_bytes(2, "big") for w in full)


def format_ipv4(a: bytes) -> str:
    return f"{a[0]}.{a[1]}.{a[2]}.{a[3]}"


def format_ipv6(a: bytes) -> str:
    w = [a[2 * k] << 8 | a[2 * k + 1] for k in range(8)]
    if w[0] == w[1] == w[2] == w[3] == w[4] == 0 and w[5] == 0xFFFF:
        return f"::ffff:{a[12]}.{a[13]}.{a[14]}.{a[15]}"
    best_start, best_len = 8, 0
    k = 0
    while k < 8:
        if w[k] == 0:
            start = k
            while k < 8 and w[k] == 0:
                k += 1
            if k - start > best_len:
                best_start, best_len = start, k - start
        else:
            k += 1
    if best_len < 2:
        return ":".join(f"{x:x}" for x in w)
    head = ":".join(f"{x:x}" for x in w[:best_start])
    tail = ":".join(f"{x:x}" for x in w[best_start + best_len :])
    return f"{head}::{tail}"


def parse_ip(s: bytes) -> bytes | None:
    """4 or 16 raw bytes of an IPv4 or IPv6 address, or None."""
    if b":" in s:
        return parse_ipv6(s)
    return parse_ipv4(s)


def format_ip(a: bytes) -> str:
    return format_ipv4(a) if len(a) == 4 else format_ipv6(a)
