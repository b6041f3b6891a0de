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
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from smtpedge.hosttable import HostTable, LocalHostTable

__all__ = ["ConnectionLimits", "RateLimit", "RateLimiter", "parse_duration"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str | int | float) -> float:
    """Exim time syntax: ``30s``, ``5m``, ``1h30m``, ``2d``; a bare number is seconds."""
    if isinstance(text, bool):
        raise ValueError("a duration must be a number or a string like '5m'")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a duration must not be negative")
        return float(text)
    s = text.strip().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    total = 0.0
    pos = 0
    for m in _DURATION.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2) or "s"]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"bad duration {text!r} (use e.g. 30s, 5m, 1h)")
    return total


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A parsed ``N / period / per_conn / strict|leaky`` specification."""

    limit: float
    period: float
    strict: bool

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        parts = [p.strip() for p in text.split("/")]
        if len(parts) < 2:
            raise ValueError(f"bad ratelimit {text!r} (use e.g. '10 / 1m / per_conn / strict')")
        try:
            limit = float(parts[0])
        except ValueError:
            raise ValueError(f"bad ratelimit count {parts[0]!r}") from None
        if limit < 0:
            raise ValueError("the ratelimit count must not be negative")
        period = parse_duration(parts[1])
        if period <= 0:
            raise ValueError("the ratelimit period must be positive")
        strict = False
        for opt in parts[2:]:
            if opt == "strict":
                strict = True
            elif opt == "leaky":
                strict = False
            elif opt != "per_conn":
                raise ValueError(f"unsupported ratelimit option {opt!r} (per_conn, strict, leaky)")
        return cls(limit, period, strict)

    def __str__(self) -> str:
        mode = "strict" if self.strict else "leaky"
        return f"{self.limit:g} / {self.period:g}s / per_conn / {mode}"


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


class ConnectionLimits:
    """Counts open connections overall (this process) and per client address
    (in ``table``: this process, or shared by every worker)."""

    __slots__ = ("max_per_host", "max_total", "ratelimiter", "table", "total")

    def __init__(
        self,
        max_total: int,
        max_per_host: int,
        ratelimit: RateLimit | None = None,
        table: HostTable | None = None,
    ) -> None:
        self.max_total = max_total
        self.max_per_host = max_per_host
        self.ratelimiter = RateLimiter(ratelimit) if ratelimit else None
        self.table: HostTable = table if table is not None else LocalHostTable()
        self.total = 0

    @property
    def active(self) -> bool:
        """False when no per-host limit is configured (nothing to count)."""
        return bool(self.max_per_host or self.ratelimiter)

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

    def release(self, host: str) -> None:
        if not self.active:
            return
        with self.table.lock:
            state = self.table.get(host)
            if state is not None:
                self.table.update(host, -1, state[1], state[2])
