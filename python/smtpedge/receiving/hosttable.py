"""Per-client state for connection limits: how many connections each real
client has open and its smoothed connection rate.

``LocalHostTable`` is a dict for a single process. ``SharedHostTable`` lives
in an anonymous shared memory mapping created before the workers fork, so
``smtp_accept_max``, ``smtp_accept_max_per_host`` and ``smtp_connect_ratelimit``
count connections across every worker, whichever one the kernel handed them
to. Each worker counts in a column of its own, so when one dies the
supervisor clears exactly what it held (``forget_worker``) and the survivors'
counts stay right. Its lock survives a holder that dies inside it, so a worker
killed in the table cannot wedge the others. It is a hot path (four locked
updates per connection with the default limits), so it exists twice: in Rust,
where the lock is a robust process-shared mutex that costs no system call
when no other worker holds it, and as its pure-Python twin, where the lock is
a POSIX record lock.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

from smtpedge._backend import impl

__all__ = ["HostState", "HostTable", "LocalHostTable", "SharedHostTable"]

HostState = tuple[int, float, float]  # open connections, rate, time of the rate (monotonic)


class HostTable(Protocol):
    @property
    def lock(self) -> Any: ...

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


SharedHostTable = impl.SharedHostTable
