"""Per-client connection limits counted in Redis, shared by every node of a
cluster (``limits_store = "redis://host:port/db"``).

Each client address has two keys, ``smtpedge:{<address>}:c`` and
``smtpedge:{<address>}:r`` (one hash slot, for Redis Cluster):

- ``:c`` is a sorted set of the client's open connections, one member per
  connection (node token, process and session), scored by the time its lease
  runs out. A node renews the leases of its connections every third of
  ``limits_store_lease``; a node that dies stops renewing, and its slots
  lapse by themselves. ``smtp_accept_max_per_host`` is the most members with
  a live lease.
- ``:r`` holds the client's smoothed connection rate and its time, for
  ``smtp_connect_ratelimit``, with the same arithmetic as the local table
  (``smtpedge.receiving.limits``).

Admission is one Lua script, so a check and its count are atomic across
nodes, and it uses Redis's clock, so the nodes' clocks do not matter.

When Redis cannot be reached (or answers with an error), the node goes on
without it: with ``limits_store_fail = "open"`` (the default) connections are
admitted without per-host limits, with ``"closed"`` they get 421. It says so
once per outage, counts each failed call in a metric, tries Redis again at
most once a second, and logs when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import Any

from smtpedge import metrics
from smtpedge.config import RateLimit
from smtpedge.log import logger

__all__ = ["RedisLimits"]

# KEYS: the connection set, the rate hash.
# ARGV: member, max per host (0: none), lease (s), rate limit (-1: none),
#       period (s), strict (0/1).
# Returns {0, rate} admitted, {1, count} too many connections, {2, rate} too fast.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local max = tonumber(ARGV[2])
local lease = tonumber(ARGV[3])
if max > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= max then return {1, tostring(n)} end
end
local limit = tonumber(ARGV[4])
local shown = '0'
if limit >= 0 then
  local period = tonumber(ARGV[5])
  local old = redis.call('HMGET', KEYS[2], 'r', 't')
  local rate
  if not old[1] then
    rate = 1.0
  else
    local i_over_p = math.max(now - tonumber(old[2]), 0) / period
    if i_over_p < 1e-9 then
      rate = tonumber(old[1]) + 1.0
    else
      local a = math.exp(-i_over_p)
      rate = (1.0 - a) / i_over_p + a * tonumber(old[1])
    end
  end
  local allowed = rate <= limit
  shown = string.format('%.17g', rate)
  if allowed or ARGV[6] == '1' or not old[1] then
    redis.call('HSET', KEYS[2], 'r', shown, 't', string.format('%.6f', now))
    redis.call('EXPIRE', KEYS[2], math.ceil(period * 20))
  end
  if not allowed then return {2, shown} end
end
if max > 0 then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[1])
  redis.call('EXPIRE', KEYS[1], math.ceil(lease) + 1)
end
return {0, shown}
"""

# KEYS: connection sets; ARGV: lease, then one member per key.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + lease, ARGV[i + 1])
  redis.call('EXPIRE', key, math.ceil(lease) + 1)
end
return #KEYS
"""

_RETRY_AFTER = 1.0  # seconds between attempts while Redis is out


def _keys(host: str) -> tuple[str, str]:
    return f"smtpedge:{{{host}}}:c", f"smtpedge:{{{host}}}:r"


class RedisLimits:
    """``smtp_accept_max_per_host`` and ``smtp_connect_ratelimit`` counted in
    Redis. ``admit`` returns None or the 421 text; a connection that was
    admitted gives its slot back with ``release``."""

    def __init__(
        self,
        url: str,
        *,
        max_per_host: int,
        ratelimit: RateLimit | None,
        lease: float = 30.0,
        timeout: float = 1.0,
        fail_open: bool = True,
    ) -> None:
        import redis.asyncio

        self.url = url
        self.max_per_host = max_per_host
        self.ratelimit = ratelimit
        self.lease = lease
        self.fail_open = fail_open
        # At most 32 connections to Redis per process; a burst of clients
        # waits its turn for one (up to ``timeout``) rather than opening more.
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            url,
            max_connections=32,
            timeout=timeout,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry_on_timeout=False,
            health_check_interval=0,
        )
        self._redis: Any = redis.asyncio.Redis(connection_pool=pool)
        self._admit = self._redis.register_script(_ADMIT)
        self._renew = self._redis.register_script(_RENEW)
        self._token = os.urandom(4).hex()
        self._ids = 0
        self.held: dict[str, str] = {}  # member -> client address
        self._down_since: float | None = None
        self._next_try = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._renewer: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return bool(self.max_per_host or self.ratelimit)

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def _failed(self, exc: BaseException) -> None:
        metrics.limits_store_errors.inc()
        now = time.monotonic()
        self._next_try = now + _RETRY_AFTER
        if self._down_since is None:
            self._down_since = now
            what = (
                "accepting connections without per-host limits (limits_store_fail = open)"
                if self.fail_open
                else "refusing connections with 421 (limits_store_fail = closed)"
            )
            logger.warning("limits store %s unreachable (%s): %s", self.url,
                           _describe(exc), what)  # fmt: skip

    def _succeeded(self) -> None:
        if self._down_since is not None:
            logger.warning("limits store %s reachable again after %.1fs", self.url,
                           time.monotonic() - self._down_since)  # fmt: skip
            self._down_since = None

    def _unavailable(self) -> str | None:
        if self.fail_open:
            return None
        return "Connection limits unavailable; please try again later"

    async def admit(self, host: str) -> tuple[str | None, str | None]:
        """Count a new connection from ``host``: (the 421 text or None, the
        member holding its slot or None)."""
        if self._down_since is not None and time.monotonic() < self._next_try:
            return self._unavailable(), None
        self._ids += 1
        member = f"{self._token}.{os.getpid():x}.{self._ids}"
        rl = self.ratelimit
        args: list[str | int] = [member, self.max_per_host, repr(self.lease),
                repr(rl.limit) if rl else "-1", repr(rl.period) if rl else "1",
                "1" if rl and rl.strict else "0"]  # fmt: skip
        try:
            status, value = await self._admit(keys=_keys(host), args=args)
        except Exception as exc:  # any failure of the store: never of the client
            self._failed(exc)
            return self._unavailable(), None
        self._succeeded()
        status = int(status)
        if status == 1:
            return (f"Too many concurrent SMTP connections from [{host}]; "
                    "please try again later"), None  # fmt: skip
        if status == 2:
            assert rl is not None
            return (
                f"Connection rate from [{host}] too high ({float(value):.1f} > "
                f"{rl.limit:g} per {rl.period:g}s); please try again later"
            ), None
        if self.max_per_host:
            self.held[member] = host
            self._start_renewer()
            return None, member
        return None, None

    def release(self, member: str) -> None:
        """Give back a slot (in a task: the connection is already gone)."""
        host = self.held.pop(member, None)
        if host is None:
            return
        task = asyncio.get_running_loop().create_task(self._release(host, member))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release(self, host: str, member: str) -> None:
        if self._down_since is not None and time.monotonic() < self._next_try:
            return  # its lease runs out by itself
        try:
            await self._redis.zrem(_keys(host)[0], member)
        except Exception as exc:
            self._failed(exc)
        else:
            self._succeeded()

    def _start_renewer(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())

    async def _renew_forever(self) -> None:
        while self.held:
            await asyncio.sleep(self.lease / 3)
            await self.renew()

    async def renew(self) -> None:
        """Extend the lease of every slot this process holds."""
        held = list(self.held.items())
        for i in range(0, len(held), 500):
            batch = held[i : i + 500]
            try:
                await self._renew(keys=[_keys(h)[0] for _, h in batch],
                                  args=[repr(self.lease), *(m for m, _ in batch)])  # fmt: skip
            except Exception as exc:
                self._failed(exc)
                return
        self._succeeded()

    async def close(self) -> None:
        """Give back every slot still held, then close the client."""
        if self._renewer is not None:
            self._renewer.cancel()
        for member in list(self.held):
            self.release(member)
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2.0)
        with contextlib.suppress(Exception):
            await self._redis.aclose(close_connection_pool=True)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:160]
