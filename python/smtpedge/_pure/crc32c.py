"""CRC-32C (Castagnoli), twin of rust/smtpedge-core/src/crc32c.rs."""

from __future__ import annotations

from smtpedge._pure._args import as_bytes


def _table() -> tuple[int, ...]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        out.append(c)
    return tuple(out)


_TABLE = _table()


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data``."""
    data = as_bytes(data, "data")
    crc = 0xFFFFFFFF
    table = _TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc ^ 0xFFFFFFFF
