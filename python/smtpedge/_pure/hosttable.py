"""The shared host table, twin of rust/smtpedge-core/src/hosttable.rs: an
open-addressing hash table in an anonymous shared mapping made before the
workers fork. Each entry holds a key, the client's rate and its time, and one
connection count per worker, so that the supervisor can clear exactly what a
dead worker held. The lock is a POSIX record lock, which the kernel drops when
its holder dies: a worker killed inside the table cannot wedge the others.
(The Rust table uses a robust process-shared mutex instead, which costs no
system call when no other worker holds it.)"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import mmap
import os
import struct
import zlib

__all__ = ["HostTableLock", "SharedHostTable"]

HostState = tuple[int, float, float]  # open connections, rate, time of the rate


class HostTableLock:
    """An exclusive lock between processes: ``fcntl`` record locks on a memfd,
    released by the kernel if the holder dies. (Between processes only: the
    event loop thread is each worker's only user.)"""

    def __init__(self) -> None:
        self._fd = os.memfd_create("smtpedge-hosttable", os.MFD_CLOEXEC)
        self._held_by = 0  # the PID holding it, as seen in this process

    def __enter__(self) -> None:
        if self._held_by == os.getpid():
            raise RuntimeError("the host table lock is already held")
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        self._held_by = os.getpid()

    def __exit__(self, *exc: object) -> None:
        if self._held_by == os.getpid():
            self._held_by = 0
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def __del__(self) -> None:
        os.close(self._fd)


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
        if slots <= 0 or slots & (slots - 1):
            raise ValueError("slots must be a power of two")
        if not 1 <= workers <= 1024:
            raise ValueError("workers must be between 1 and 1024")
        self._slots = slots
        self._workers = workers
        self._worker = 0
        self._mask = slots - 1
        self._entry = struct.Struct(f"<16sidd{workers}i")  # key, used, rate, time, counts
        self._mm = mmap.mmap(-1, _HEADER.size + slots * self._entry.size)  # MAP_SHARED
        self._lock = HostTableLock()

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def lock(self) -> HostTableLock:
        return self._lock

    @property
    def worker(self) -> int:
        """The column this process counts in."""
        return self._worker

    @worker.setter
    def worker(self, worker: int) -> None:
        self._worker = self._column(worker)

    def _column(self, worker: int) -> int:
        if not 0 <= worker < self._workers:
            raise ValueError(f"worker must be between 0 and {self._workers - 1}")
        return worker

    def _off(self, i: int) -> int:
        return _HEADER.size + i * self._entry.size

    def _slot(self, key: bytes) -> tuple[int, bool]:
        """The slot holding ``key``, or the empty slot where it would go."""
        mm = self._mm
        i = zlib.crc32(key) & self._mask
        for _ in range(self._slots):
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
            counts = [0] * self._workers
            (used,) = _HEADER.unpack_from(self._mm, 0)
            if (used + 1) * 4 > self._slots * 3:
                self._compact()
                off, found = self._slot(key)
                (used,) = _HEADER.unpack_from(self._mm, 0)
            _HEADER.pack_into(self._mm, 0, used + 1)
        counts[self._worker] = max(counts[self._worker] + delta, 0)
        self._entry.pack_into(self._mm, off, key, 1, rate, when, *counts)

    def forget_worker(self, worker: int) -> None:
        """Clear every count of a worker that died: its connections are gone;
        the other workers' counts stay as they are (rates stay too)."""
        worker = self._column(worker)
        with self._lock:
            for i in range(self._slots):
                off = self._off(i)
                entry = list(self._entry.unpack_from(self._mm, off))
                if entry[1] and entry[4 + worker]:
                    entry[4 + worker] = 0
                    self._entry.pack_into(self._mm, off, *entry)

    def _compact(self) -> None:
        live = []
        for i in range(self._slots):
            entry = self._entry.unpack_from(self._mm, self._off(i))
            if entry[1]:
                live.append((sum(entry[4:]) > 0, entry[3], entry))
        live.sort(key=lambda e: (e[0], e[1]), reverse=True)  # open first, then newest
        keep = live[: self._slots // 2]
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
