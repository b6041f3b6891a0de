"""Connection limits, applied to the real client address (the proxied one when
the PROXY protocol is in use): ``smtp_accept_max`` overall,
``smtp_accept_max_per_host`` per client, and a per-client connection rate
limit with Exim's ``ratelimit`` semantics.

Exim's rate is an exponentially weighted moving average: after an interval
``t`` since the client's last counted event, with ``a = exp(-t/period)``,

    rate = (1 - a) * count / (t / period) + a * rate

so a burst of ``N`` connections inside a short time gives a rate close to ``N``.
A client is over the limit when its rate exceeds ``N``. In ``strict`` mode the
rate is updated even while the client is over the limit (a client that keeps
trying stays blocked); in ``leaky`` mode (the default) only accepted events
count, so the client gets back in as soon as its rate has decayed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from smtpedge.config import RateLimit
from smtpedge.receiving.hosttable import HostTable, LocalHostTable

if TYPE_CHECKING:
    from smtpedge.receiving.limitstore import RedisLimits

__all__ = ["ConnectionLimits", "RateLimiter"]


class RateLimiter:
    """Per-key smoothed event rates (see the module docstring)."""

    __slots__ = ("_clock", "_rates", "spec")

    def __init__(self, spec: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.spec = spec
        self._clock = clock
        self._rates: dict[str, tuple[float, float]] = {}  # key -> (rate, time)

    def step(self, old: tuple[float, float] | None, now: float) -> tuple[bool, float, bool]:
        """One event after state ``old`` (rate, time): return whether it is
        allowed, the new rate, and whether the new rate is to be stored."""
        if old is None:
            rate = 1.0
        else:
            old_rate, then = old
            i_over_p = max(now - then, 0.0) / self.spec.period
            if i_over_p < 1e-9:
                rate = old_rate + 1.0
            else:
                a = math.exp(-i_over_p)
                rate = (1.0 - a) / i_over_p + a * old_rate
        allowed = rate <= self.spec.limit
        return allowed, rate, allowed or self.spec.strict or old is None

    def hit(self, key: str) -> tuple[bool, float]:
        """Count one event for ``key``; return (allowed, current rate)."""
        now = self._clock()
        allowed, rate, store = self.step(self._rates.get(key), now)
        if store:
            self._rates[key] = (rate, now)
        if len(self._rates) > 100_000:
            self._expire(now)
        return allowed, rate

    def _expire(self, now: float) -> None:
        horizon = self.spec.period * 20
        for key in [k for k, (_, t) in self._rates.items() if now - t > horizon]:
            del self._rates[key]


_TOTAL = "*all connections*"  # not an address: its own key in the host table
_CHECKS = "*health checks refused*"  # while draining, by every worker


class ConnectionLimits:
    """Counts open connections overall (this process) and per client address
    (in ``table``: this process, or shared by every worker)."""

    __slots__ = ("max_per_host", "max_total", "ratelimiter", "store", "table", "total")

    def __init__(
        self,
        max_total: int,
        max_per_host: int,
        ratelimit: RateLimit | None = None,
        table: HostTable | None = None,
        store: RedisLimits | None = None,
    ) -> None:
        self.max_total = max_total
        self.max_per_host = max_per_host
        self.ratelimiter = RateLimiter(ratelimit) if ratelimit else None
        self.table: HostTable = table if table is not None else LocalHostTable()
        # Per-host counts and rates in Redis instead of the table (the overall
        # limit stays here: it protects this node).
        self.store = store if store is not None and store.active else None
        self.total = 0

    @property
    def active(self) -> bool:
        """False when no per-host limit is counted here (none is configured,
        or Redis counts them)."""
        return self.store is None and bool(self.max_per_host or self.ratelimiter)

    def count(self, host: str) -> int:
        state = self.table.get(host)
        return state[0] if state else 0

    def open(self) -> str | None:
        """Take an overall slot at connect time; return None, or the 421 text.
        The count lives in the table too, so workers share one limit."""
        if self.max_total:
            with self.table.lock:
                state = self.table.get(_TOTAL)
                if state is not None and state[0] >= self.max_total:
                    return "Too many concurrent SMTP connections; please try again later"
                self.table.update(_TOTAL, 1, 0.0, 0.0)
        self.total += 1
        return None

    def close(self) -> None:
        """Give back a slot taken by ``open``."""
        self.total -= 1
        if self.max_total:
            with self.table.lock:
                self.table.update(_TOTAL, -1, 0.0, 0.0)

    def admit(self, host: str) -> str | None:
        """Take a slot for the real client ``host`` (after any PROXY header);
        return None, or the 421 text saying why not."""
        if not self.active:
            return None
        with self.table.lock:
            count, rate, when = self.table.get(host) or (0, 0.0, 0.0)
            if self.max_per_host and count >= self.max_per_host:
                return f"Too many concurrent SMTP connections from [{host}]; please try again later"
            rl = self.ratelimiter
            if rl is not None:
                now = rl._clock()
                allowed, new_rate, store = rl.step((rate, when) if when else None, now)
                if store:
                    rate, when = new_rate, now
                if not allowed:
                    self.table.update(host, 0, rate, when)
                    return (
                        f"Connection rate from [{host}] too high ({new_rate:.1f} > "
                        f"{rl.spec.limit:g} per {rl.spec.period:g}s); please try again later"
                    )
            self.table.update(host, 1, rate, when)
        return None

    def refused_check(self) -> int:
        """Count a health check refused while draining; return how many every
        worker has refused."""
        with self.table.lock:
            self.table.update(_CHECKS, 1, 0.0, 0.0)
            state = self.table.get(_CHECKS)
        return state[0] if state else 0

    def checks_refused(self) -> int:
        state = self.table.get(_CHECKS)
        return state[0] if state else 0

    def release(self, host: str) -> None:
        if not self.active:
            return
        with self.table.lock:
            state = self.table.get(host)
            if state is not None:
                self.table.update(host, -1, state[1], state[2])
