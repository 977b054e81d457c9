"""Request-rate windows: how many generation requests a key made in the last minute.

A sliding log: the times of the requests let in during the last WINDOW_S seconds. In
production one sorted set per key in Redis, checked and appended by one Lua script (atomic:
every API process shares it, and no two can both take the last slot), timed by Redis's own
clock so the processes' clocks do not matter; in-process when embedded (a dict and a lock).
A refused request is not recorded, so it does not push the window further out.
"""

import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from redis.asyncio import Redis

WINDOW_S = 60
KEY_PREFIX = "gih:rate:"


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    remaining: int  # requests still allowed in the window after this one
    reset_s: int  # whole seconds until the next slot frees (Retry-After when refused)


class RateWindow(Protocol):
    async def hit(self, key_id: str, limit: int) -> Verdict:
        """Count one request of `key_id` if fewer than `limit` are in the window."""


def whole_seconds(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-6))


# KEYS[1]: the key's sorted set (members: unique ids; scores: times in microseconds).
# ARGV: limit, window in microseconds, a unique member. Returns {allowed, count, reset_us}:
# count is the requests in the window after this one; reset_us the time until the request
# whose leaving brings the count below the limit leaves.
HIT_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  count = count + 1
  allowed = 1
end
local index = count - limit
if index < 0 then index = 0 end
local entry = redis.call('ZRANGE', KEYS[1], index, index, 'WITHSCORES')
local reset = window
if entry[2] then reset = tonumber(entry[2]) + window - now end
if count > 0 then redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000)) end
return {allowed, count, reset}
"""


class RedisRateWindow:
    """The window in Redis, shared by every API process on the same Redis."""

    def __init__(self, client: "Callable[[], Redis]") -> None:
        self._client = client  # called per hit: the queue's pool may be replaced on reconnect
        self._script: Any = None
        self._script_client: object | None = None

    async def hit(self, key_id: str, limit: int) -> Verdict:
        client = self._client()
        if self._script is None or self._script_client is not client:
            self._script = client.register_script(HIT_SCRIPT)  # EVALSHA, loaded on NOSCRIPT
            self._script_client = client
        allowed, count, reset_us = await self._script(
            keys=[KEY_PREFIX + key_id],
            args=[limit, WINDOW_S * 1_000_000, f"{time.time_ns()}-{secrets.token_hex(4)}"])
        return Verdict(bool(allowed), max(0, limit - int(count)),
                       whole_seconds(int(reset_us) / 1_000_000))


class LocalRateWindow:
    """The window in this process (embedded: one API process)."""

    PRUNE_EVERY = 1024

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._times: dict[str, deque[float]] = {}
        self._hits = 0

    async def hit(self, key_id: str, limit: int) -> Verdict:
        with self._lock:
            now = self._clock()
            times = self._times.setdefault(key_id, deque())
            while times and times[0] <= now - WINDOW_S:
                times.popleft()
            allowed = len(times) < limit
            if allowed:
                times.append(now)
            index = max(0, len(times) - limit)
            reset = times[index] + WINDOW_S - now if times else WINDOW_S
            remaining = max(0, limit - len(times))
            self._hits += 1
            if self._hits % self.PRUNE_EVERY == 0:
                self._prune(now)
        return Verdict(allowed, remaining, whole_seconds(reset))

    def _prune(self, now: float) -> None:
        """Forget keys with nothing left in their window, so idle keys cost no memory."""
        for key_id in [k for k, t in self._times.items() if not t or t[-1] <= now - WINDOW_S]:
            del self._times[key_id]
