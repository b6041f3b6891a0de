"""Per-client state for connection limits: how many connections each real
client has open and its smoothed connection rate.

``LocalHostTable`` is a dict for a single process. ``SharedHostTable`` lives
in an anonymous shared memory mapping created before the workers fork, so
``smtp_accept_max_per_host`` and ``smtp_connect_ratelimit`` count a client's
connections across every worker, whichever one the kernel handed them to.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import mmap
import multiprocessing
import struct
import zlib
from typing import Any, Protocol

__all__ = ["HostState", "HostTable", "LocalHostTable", "SharedHostTable"]

HostState = tuple[int, float, float]  # open connections, rate, time of the rate (monotonic)


class HostTable(Protocol):
    lock: Any

    def get(self, host: str) -> HostState | None: ...
    def put(self, host: str, state: HostState) -> None: ...


class LocalHostTable:
    """Per-client state in this process only."""

    def __init__(self) -> None:
        self.lock = contextlib.nullcontext()
        self._d: dict[str, HostState] = {}

    def get(self, host: str) -> HostState | None:
        return self._d.get(host)

    def put(self, host: str, state: HostState) -> None:
        if state[0] <= 0 and state[2] == 0.0:
            self._d.pop(host, None)
        else:
            self._d[host] = state
        if len(self._d) > 200_000:
            self._d = {k: v for k, v in self._d.items() if v[0] > 0}


_HEADER = struct.Struct("<q")  # slots in use
_ENTRY = struct.Struct("<16siidd")  # key, in use, open connections, rate, time
_EMPTY = bytes(16)


def _key(host: str) -> bytes:
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:  # not an address: still a stable 16-byte key
        return hashlib.blake2b(host.encode(), digest_size=16).digest()
    if isinstance(ip, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + ip.packed  # as an IPv4-mapped IPv6 address
    return ip.packed


class SharedHostTable:
    """An open-addressing hash table in shared memory, guarded by a process
    lock. Entries of clients with no open connection are dropped when the
    table fills past three quarters, keeping those with the newest rates."""

    def __init__(self, slots: int = 1 << 16) -> None:
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        self.slots = slots
        self._mask = slots - 1
        self._mm = mmap.mmap(-1, _HEADER.size + slots * _ENTRY.size)  # MAP_SHARED
        self.lock = multiprocessing.Lock()

    def _slot(self, key: bytes) -> tuple[int, bool]:
        """The slot holding ``key``, or the empty slot where it would go."""
        mm = self._mm
        i = zlib.crc32(key) & self._mask
        for _ in range(self.slots):
            off = _HEADER.size + i * _ENTRY.size
            stored = mm[off : off + 16]
            if stored == key:
                return off, True
            if stored == _EMPTY:
                return off, False
            i = (i + 1) & self._mask
        raise RuntimeError("host table full")  # pragma: no cover - compaction prevents it

    def get(self, host: str) -> HostState | None:
        off, found = self._slot(_key(host))
        if not found:
            return None
        _, _, count, rate, when = _ENTRY.unpack_from(self._mm, off)
        return count, rate, when

    def put(self, host: str, state: HostState) -> None:
        key = _key(host)
        off, found = self._slot(key)
        if not found:
            (used,) = _HEADER.unpack_from(self._mm, 0)
            if (used + 1) * 4 > self.slots * 3:
                self._compact()
                off, found = self._slot(key)
                (used,) = _HEADER.unpack_from(self._mm, 0)
            _HEADER.pack_into(self._mm, 0, used + 1)
        _ENTRY.pack_into(self._mm, off, key, 1, state[0], state[1], state[2])

    def reset_counts(self) -> None:
        """Forget every open-connection count (rates stay). Used when a worker
        dies: its connections are gone, but not which clients they were from,
        so counts err low (clamped at zero) until the survivors' clients leave."""
        with self.lock:
            for i in range(self.slots):
                off = _HEADER.size + i * _ENTRY.size
                key, used, count, rate, when = _ENTRY.unpack_from(self._mm, off)
                if used and count:
                    _ENTRY.pack_into(self._mm, off, key, used, 0, rate, when)

    def _compact(self) -> None:
        live = []
        for i in range(self.slots):
            off = _HEADER.size + i * _ENTRY.size
            key, used, count, rate, when = _ENTRY.unpack_from(self._mm, off)
            if used:
                live.append((count > 0, when, key, count, rate))
        live.sort(reverse=True)  # open connections first, then the newest rates
        keep = live[: self.slots // 2]
        self._mm[:] = bytes(len(self._mm))
        for _, when, key, count, rate in keep:
            i = zlib.crc32(key) & self._mask
            while True:
                off = _HEADER.size + i * _ENTRY.size
                if self._mm[off : off + 16] == _EMPTY:
                    _ENTRY.pack_into(self._mm, off, key, 1, count, rate, when)
                    break
                i = (i + 1) & self._mask
        _HEADER.pack_into(self._mm, 0, len(keep))
