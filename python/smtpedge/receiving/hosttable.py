"""Per-client state for connection limits: how many connections each real
client has open and its smoothed connection rate.

``LocalHostTable`` is a dict for a single process. ``SharedHostTable`` lives
in an anonymous shared memory mapping created before the workers fork, so
``smtp_accept_max_per_host`` and ``smtp_connect_ratelimit`` count a client's
connections across every worker, whichever one the kernel handed them to.
Each worker counts in a column of its own, so when one dies the supervisor
clears exactly what it held (``forget_worker``) and the survivors' counts stay
right. The lock is a POSIX record lock, which the kernel drops when its holder
dies: a worker killed inside the table cannot wedge the others.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import mmap
import os
import struct
import zlib
from typing import Any, Protocol

__all__ = ["HostState", "HostTable", "LocalHostTable", "SharedHostTable"]

HostState = tuple[int, float, float]  # open connections, rate, time of the rate (monotonic)


class HostTable(Protocol):
    lock: Any

    def get(self, host: str) -> HostState | None: ...
    def update(self, host: str, delta: int, rate: float, when: float) -> None: ...


class LocalHostTable:
    """Per-client state in this process only."""

    def __init__(self) -> None:
        self.lock = contextlib.nullcontext()
        self._d: dict[str, HostState] = {}

    def get(self, host: str) -> HostState | None:
        return self._d.get(host)

    def update(self, host: str, delta: int, rate: float, when: float) -> None:
        """Add ``delta`` to the host's open connections; set its rate."""
        old = self._d.get(host)
        count = max((old[0] if old else 0) + delta, 0)
        if count <= 0 and when == 0.0:
            self._d.pop(host, None)
        else:
            self._d[host] = (count, rate, when)
        if len(self._d) > 200_000:
            self._d = {k: v for k, v in self._d.items() if v[0] > 0}


class _RecordLock:
    """An exclusive lock between processes: ``fcntl`` record locks on a memfd,
    released by the kernel if the holder dies. (Between processes only: the
    event loop thread is each worker's only user.)"""

    def __init__(self) -> None:
        self._fd = os.memfd_create("smtpedge-hosttable", os.MFD_CLOEXEC)

    def __enter__(self) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN)


_HEADER = struct.Struct("<q")  # slots in use
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
    """An open-addressing hash table in shared memory. Each entry holds a key,
    the rate and its time, and one connection count per worker. Entries of
    clients with no open connection are dropped when the table fills past
    three quarters, keeping those with the newest rates. Set ``worker`` in
    each worker process to the column it counts in."""

    def __init__(self, slots: int = 1 << 16, workers: int = 1) -> None:
        if slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        if not 1 <= workers <= 1024:
            raise ValueError("workers must be between 1 and 1024")
        self.slots = slots
        self.workers = workers
        self.worker = 0
        self._mask = slots - 1
        self._entry = struct.Struct(f"<16sidd{workers}i")  # key, used, rate, time, counts
        self._mm = mmap.mmap(-1, _HEADER.size + slots * self._entry.size)  # MAP_SHARED
        self.lock = _RecordLock()

    def _off(self, i: int) -> int:
        return _HEADER.size + i * self._entry.size

    def _slot(self, key: bytes) -> tuple[int, bool]:
        """The slot holding ``key``, or the empty slot where it would go."""
        mm = self._mm
        i = zlib.crc32(key) & self._mask
        for _ in range(self.slots):
            off = self._off(i)
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
        entry = self._entry.unpack_from(self._mm, off)
        return sum(entry[4:]), entry[2], entry[3]

    def update(self, host: str, delta: int, rate: float, when: float) -> None:
        """Add ``delta`` to this worker's count for the host; set its rate."""
        key = _key(host)
        off, found = self._slot(key)
        if found:
            counts = list(self._entry.unpack_from(self._mm, off)[4:])
        else:
            counts = [0] * self.workers
            (used,) = _HEADER.unpack_from(self._mm, 0)
            if (used + 1) * 4 > self.slots * 3:
                self._compact()
                off, found = self._slot(key)
                (used,) = _HEADER.unpack_from(self._mm, 0)
            _HEADER.pack_into(self._mm, 0, used + 1)
        counts[self.worker] = max(counts[self.worker] + delta, 0)
        self._entry.pack_into(self._mm, off, key, 1, rate, when, *counts)

    def forget_worker(self, worker: int) -> None:
        """Clear every count of a worker that died: its connections are gone;
        the other workers' counts stay as they are (rates stay too)."""
        with self.lock:
            for i in range(self.slots):
                off = self._off(i)
                entry = list(self._entry.unpack_from(self._mm, off))
                if entry[1] and entry[4 + worker]:
                    entry[4 + worker] = 0
                    self._entry.pack_into(self._mm, off, *entry)

    def _compact(self) -> None:
        live = []
        for i in range(self.slots):
            entry = self._entry.unpack_from(self._mm, self._off(i))
            if entry[1]:
                live.append((sum(entry[4:]) > 0, entry[3], entry))
        live.sort(key=lambda e: (e[0], e[1]), reverse=True)  # open first, then newest
        keep = live[: self.slots // 2]
        self._mm[:] = bytes(len(self._mm))
        for _, _, entry in keep:
            i = zlib.crc32(entry[0]) & self._mask
            while True:
                off = self._off(i)
                if self._mm[off : off + 16] == _EMPTY:
                    self._entry.pack_into(self._mm, off, *entry)
                    break
                i = (i + 1) & self._mask
        _HEADER.pack_into(self._mm, 0, len(keep))
