"""xtext (RFC 3461 section 4) and utf-8-addr-xtext/unitext (RFC 6533 section 3);
twin of rust/smtpedge-core/src/xtext.rs.

    xtext   = *( xchar / hexchar )
    xchar   = "!" .. "~" except "+" and "="
    hexchar = "+" 2(%x30-39 / %x41-46)        ; upper-case hex only
    QCHAR   = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e
    EmbeddedUnicodeChar = "\\x{" HEXPOINT "}"  ; upper-case hex, shortest form
"""

from __future__ import annotations

import re

from smtpedge._pure._args import as_bytes, as_str
from smtpedge.errors import XtextError

_XCHAR = frozenset(b for b in range(33, 127) if b not in (0x2B, 0x3D))
_ENCODE = tuple(chr(b) if b in _XCHAR else f"+{b:02X}" for b in range(256))
_UPPER_HEX = frozenset(b"0123456789ABCDEF")
# A fully valid xtext string: decode it in one step.
_VALID = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*\Z")
_ESCAPE = re.compile(r"\+([0-9A-F]{2})")


def encode(data: bytes) -> str:
    """Encode bytes as xtext."""
    return "".join([_ENCODE[b] for b in as_bytes(data, "data")])


def decode(text: str) -> bytes:
    """Decode strict xtext; raise XtextError on anything else."""
    text = as_str(text, "text")
    if _VALID.match(text):
        if "+" not in text:
            return text.encode("ascii")
        return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text).encode("latin-1")
    s = text.encode("utf-8", "surrogatepass")
    i = 0
    while i < len(s):
        b = s[i]
        if b == 0x2B:
            if i + 2 >= len(s):
                raise XtextError("truncated +XX escape", i)
            if s[i + 1] not in _UPPER_HEX or s[i + 2] not in _UPPER_HEX:
                raise XtextError("escape is not + and two upper-case hex digits", i)
            i += 3
        elif b in _XCHAR:
            i += 1
        else:
            raise XtextError("character not allowed in xtext", i)
    raise AssertionError("unreachable: the text was valid")  # pragma: no cover


def _is_qchar(c: str) -> bool:
    o = ord(c)
    return 0x21 <= o <= 0x7E and o not in (0x2B, 0x3D, 0x5C)


def encode_utf8_addr(address: str, *, unitext: bool = False) -> str:
    """Encode an address as utf-8-addr-xtext (every non-ASCII character
    escaped) or, with ``unitext``, utf-8-addr-unitext."""
    address = as_str(address, "address")
    out = []
    for c in address:
        if _is_qchar(c) or (unitext and ord(c) >= 0x80):
            out.append(c)
        else:
            out.append(f"\\x{{{ord(c):02X}}}")
    return "".join(out)


def _escapable(v: int) -> bool:
    if 0x01 <= v <= 0x20 or v in (0x2B, 0x3D, 0x5C, 0x7F):
        return True
    return 0x80 <= v <= 0x10FFFF and not 0xD800 <= v <= 0xDFFF


def decode_utf8_addr(text: str) -> str:
    """Decode utf-8-addr-xtext or utf-8-addr-unitext back to the address."""
    text = as_str(text, "text")
    if not text:
        raise XtextError("empty utf-8-addr-xtext", 0)
    s = text.encode("utf-8", "surrogatepass")
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        b = s[i]
        if b == 0x5C:
            if n < i + 3 or s[i + 1] != 0x78 or s[i + 2] != 0x7B:
                raise XtextError("backslash not followed by x{", i)
            start = i + 3
            j = start
            while j < n and j - start < 7 and s[j] in _UPPER_HEX:
                j += 1
            if j >= n or s[j] != 0x7D:
                raise XtextError("\\x{...} escape is not 2 to 6 upper-case hex digits and }", i)
            digits = s[start:j]
            if len(digits) < 2 or len(digits) > 6 or (len(digits) > 2 and digits[0] == 0x30):
                raise XtextError("\\x{...} escape is not in shortest form", i)
            v = int(digits, 16)
            if not _escapable(v):
                raise XtextError("\\x{...} escape of a character that needs none or is invalid", i)
            out.append(chr(v))
            i = j + 1
        elif b < 0x80:
            if not (0x21 <= b <= 0x7E and b not in (0x2B, 0x3D, 0x5C)):
                raise XtextError("character not allowed in utf-8-addr-xtext", i)
            out.append(chr(b))
            i += 1
        else:
            k = i + 1
            while k < n and s[k] & 0xC0 == 0x80:
                k += 1
            out.append(s[i:k].decode("utf-8", "surrogatepass"))
            i = k
    return "".join(out)
