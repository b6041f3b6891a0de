"""What users reach for today, driven the way our benchmarks need: aiosmtpd's
PROXY parser, service-identity's hostname check, a straightforward xtext
encoder."""

from __future__ import annotations

from typing import Any

from aiosmtpd.proxy_protocol import get_proxy
from service_identity.hazmat import DNS_ID, DNSPattern


class _BytesReader:
    """The AsyncReader aiosmtpd's get_proxy() wants, over a bytes buffer."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = self.data[self.pos : end]
        self.pos += len(out)
        return out

    async def readexactly(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        end = self.data.index(separator, self.pos) + len(separator)
        out = self.data[self.pos : end]
        self.pos = end
        return out


def aiosmtpd_parse_proxy(data: bytes) -> Any:
    """Run aiosmtpd's coroutine to completion without an event loop (its reader
    never suspends here, so the parser alone is measured)."""
    coro = get_proxy(_BytesReader(data))
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("aiosmtpd's parser suspended")


def service_identity_match(pattern: bytes, hostname: str) -> bool:
    return bool(DNS_ID(hostname).verify(DNSPattern.from_bytes(pattern)))


def naive_xtext_encode(data: bytes) -> str:
    return "".join(chr(b) if 33 <= b <= 126 and b not in (43, 61) else f"+{b:02X}" for b in data)
