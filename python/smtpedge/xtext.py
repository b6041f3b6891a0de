"""xtext (RFC 3461 section 4), used by DSN's ENVID and ORCPT, and the
utf-8-addr-xtext / utf-8-addr-unitext forms of RFC 6533."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smtpedge._backend import impl as _impl
from smtpedge.errors import XtextError

if TYPE_CHECKING:
    from smtpedge._pure.xtext import decode, decode_utf8_addr, encode, encode_utf8_addr
else:
    encode = _impl.xtext_encode
    decode = _impl.xtext_decode
    encode_utf8_addr = _impl.utf8_addr_encode
    decode_utf8_addr = _impl.utf8_addr_decode

__all__ = ["XtextError", "decode", "decode_utf8_addr", "encode", "encode_utf8_addr"]
