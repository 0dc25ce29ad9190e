"""Meta's rate limits, shared by every worker through Redis: per number, and per pair.

A Lua script implements GCRA rather than a library: the libraries we found (e.g. limits,
aiolimiter) either keep state in-process or answer only yes/no, while waq needs an atomic
*reservation* across two limits (the number's and the pair's) that tells each waiting
worker its own slot, so a crowd of workers never wakes at once to race for one slot.

- The number's limit is spaced evenly (no burst), slightly under the configured rate
  (``safety``), so no one-second window ever holds more than Meta's limit.
- The pair's limit is GCRA with Meta's burst (45, borrowing from later) and interval (6 s).
- Meta's throttling answers divide the rate (130429 for the number, 4/80007 for everything)
  and the divisor decays back to 1 over ``recover_s``; 131056 pushes the pair's next slot
  4^x seconds out. Times come from Redis's clock, the same for every worker machine.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from producer import keys

__all__ = ["APP_SCOPE", "RateConfig", "RateLimiter", "Slot"]

APP_SCOPE: Final = "app"

_NOW = (
    "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"
    # A unix time as text to the microsecond (tostring keeps 14 digits: 0.1 ms, and a slot
    # rounded down on every reservation runs the limiter fast).
    "local function t6(x) return string.format('%.6f', x) end\n"
)

_FACTOR = """
local function factor(key, recover)
  local f = tonumber(redis.call('HGET', key, 'factor') or '1')
  local at = tonumber(redis.call('HGET', key, 'at') or '0')
  local left = 1 - (now - at) / recover
  if left <= 0 then return 1 end
  return 1 + (f - 1) * left
end
"""

# KEYS: number TAT, pair TAT, number slowdown, app slowdown, per-number mps hash.
# ARGV: phone_number_id, default mps, safety, pair interval, pair burst, max wait, recover s.
# Returns {granted (0/1), wait seconds (string), reason}.
_ACQUIRE: Final = (
    _NOW
    + _FACTOR
    + """
local recover = tonumber(ARGV[7])
local mps = tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or ARGV[2])
local rate = mps * (1 - tonumber(ARGV[3])) / (factor(KEYS[3], recover) * factor(KEYS[4], recover))
local interval = 1 / rate
local pair_interval = tonumber(ARGV[4])
local pair_tolerance = (tonumber(ARGV[5]) - 1) * pair_interval
local pair_tat = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), now)
if pair_tat - pair_tolerance > now then
  return {0, tostring(pair_tat - pair_tolerance - now), 'pair'}
end
local slot = math.max(now, tonumber(redis.call('GET', KEYS[1]) or '0'))
local wait = slot - now
if wait > tonumber(ARGV[6]) then return {0, tostring(wait), 'number'} end
local ttl_ms = math.ceil((wait + interval) * 1000) + 1000
redis.call('SET', KEYS[1], t6(slot + interval), 'PX', ttl_ms)
local pair_next = math.max(pair_tat, slot) + pair_interval
redis.call('SET', KEYS[2], t6(pair_next), 'PX', math.ceil((pair_next - now) * 1000) + 1000)
return {1, tostring(wait), ''}
"""
)

# KEYS: slowdown hash. ARGV: recover s, max factor, cooldown s. Doubles the current
# (decayed) factor, once per cooldown: the requests in flight when Meta first refused are
# refused too, and they are one signal, not several.
_SLOW_DOWN: Final = (
    _NOW
    + _FACTOR
    + """
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '0')
if now - at < tonumber(ARGV[3]) then return tostring(factor(KEYS[1], tonumber(ARGV[1]))) end
local f = math.min(factor(KEYS[1], tonumber(ARGV[1])) * 2, tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'factor', tostring(f), 'at', t6(now))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
return tostring(f)
"""
)

# KEYS: slowdown hash. ARGV: recover s. The current (decayed) divisor, for operators.
_SLOWDOWN: Final = _NOW + _FACTOR + "return tostring(factor(KEYS[1], tonumber(ARGV[1])))\n"

# KEYS: pair TAT. ARGV: delay s, pair interval, pair burst. No slot for delay seconds.
_BACK_OFF_PAIR: Final = (
    _NOW
    + """
local tolerance = (tonumber(ARGV[3]) - 1) * tonumber(ARGV[2])
local blocked = now + tonumber(ARGV[1]) + tolerance
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), blocked)
redis.call('SET', KEYS[1], t6(tat), 'PX', math.ceil((tat - now) * 1000) + 1000)
return tostring(tat - now)
"""
)

# KEYS: pair TAT. ARGV: pair interval. Gives back one slot (Meta refused the message, so
# it never reached the customer and does not count against the pair).
_RELEASE_PAIR: Final = (
    _NOW
    + """
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local released = math.max(now, tat - tonumber(ARGV[1]))
if tat > now then redis.call('SET', KEYS[1], t6(released), 'KEEPTTL') end
return 1
"""
)


@dataclass(frozen=True, slots=True)
class RateConfig:
    """Limits and how waq reacts to Meta's throttling."""

    default_mps: float = 80.0
    pair_interval_s: float = 6.0
    pair_burst: int = 45
    safety: float = 0.03
    max_sleep_s: float = 1.0
    # A slot missed by more than this is given up: sends then stay within (slot, slot +
    # tolerance], so one second holds at most (1 + tolerance) * rate * (1 - safety) <= mps.
    late_tolerance_s: float = 0.01
    recover_s: float = 60.0
    max_slowdown: float = 16.0
    slowdown_cooldown_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Slot:
    """A reservation: sleep ``wait_s`` then send; or, not granted, come back in ``wait_s``.

    ``reason`` says which limit refused: ``number``, ``pair``, or ``busy`` (this worker kept
    missing its slots).
    """

    granted: bool
    wait_s: float
    reason: str


class RateLimiter:
    """Reserves send slots under the number's and the pair's limits."""

    def __init__(self, redis: Redis, config: RateConfig | None = None) -> None:
        self.redis = redis
        self.config = config or RateConfig()
        self._acquire = redis.register_script(_ACQUIRE)
        self._slow_down = redis.register_script(_SLOW_DOWN)
        self._slowdown = redis.register_script(_SLOWDOWN)
        self._back_off_pair = redis.register_script(_BACK_OFF_PAIR)
        self._release_pair = redis.register_script(_RELEASE_PAIR)
        # The pair's spacing gets the same margin as the number's: arrival jitter must not
        # bring a message in before Meta's bucket has refilled.
        self._pair_interval_s = self.config.pair_interval_s * (1 + self.config.safety)

    async def acquire(self, phone_number_id: str, wa_id: str) -> Slot:
        """Reserve the next slot if it is within ``max_sleep_s``; else say how long to wait."""
        c = self.config
        granted, wait, reason = await self._acquire(
            keys=[
                keys.number_rate(phone_number_id),
                keys.pair_rate(phone_number_id, wa_id),
                keys.slowdown(phone_number_id),
                keys.slowdown(APP_SCOPE),
                keys.RATE_LIMITS,
            ],
            args=[phone_number_id, c.default_mps, c.safety, self._pair_interval_s, c.pair_burst,
                  c.max_sleep_s, c.recover_s],
        )  # fmt: skip
        return Slot(
            bool(granted), float(wait), reason.decode() if isinstance(reason, bytes) else reason
        )

    async def wait_for_slot(self, phone_number_id: str, wa_id: str, *, tries: int = 5) -> Slot:
        """Reserve a slot and sleep until it; a refusal (a long wait) is returned as is.

        The slot lies between ``asked + wait`` and ``answered + wait`` (Redis timed it
        somewhere in the round trip). A send is never early: the sleep runs to the latest
        bound. A slot then more than ``late_tolerance_s`` past the earliest (a stalled event
        loop) is given up and another taken, because a late send bunches with on-time ones
        and breaks Meta's per-second limit. After ``tries`` misses the caller should back off.
        """
        for _ in range(tries):
            asked = time.monotonic()
            slot = await self.acquire(phone_number_id, wa_id)
            answered = time.monotonic()
            if not slot.granted:
                return slot
            if (delay := answered + slot.wait_s - time.monotonic()) > 0:
                await asyncio.sleep(delay)
            if time.monotonic() - (asked + slot.wait_s) <= self.config.late_tolerance_s:
                return slot
        return Slot(granted=False, wait_s=0.1, reason="busy")

    async def slow_down(self, scope: str) -> float:
        """Halve the rate of a number (or ``APP_SCOPE``: every number); returns the divisor."""
        factor = await self._slow_down(
            keys=[keys.slowdown(scope)],
            args=[self.config.recover_s, self.config.max_slowdown, self.config.slowdown_cooldown_s],
        )
        return float(factor)

    async def slowdown(self, scope: str) -> float:
        """The divisor Meta's throttling puts on a number's (or the app's) rate now; 1 = none."""
        return float(
            await self._slowdown(keys=[keys.slowdown(scope)], args=[self.config.recover_s])
        )

    async def back_off_pair(self, phone_number_id: str, wa_id: str, delay_s: float) -> float:
        """No message to this customer for ``delay_s`` (Meta's 131056 answer)."""
        c = self.config
        wait = await self._back_off_pair(
            keys=[keys.pair_rate(phone_number_id, wa_id)],
            args=[delay_s, self._pair_interval_s, c.pair_burst],
        )
        return float(wait)

    async def release_pair(self, phone_number_id: str, wa_id: str) -> None:
        """Give back a pair slot whose message Meta certainly did not send."""
        await self._release_pair(
            keys=[keys.pair_rate(phone_number_id, wa_id)], args=[self._pair_interval_s]
        )

    async def set_mps(self, phone_number_id: str, mps: float | None) -> None:
        """Configure a number's throughput (None: back to the default)."""
        if mps is None:
            await self.redis.hdel(keys.RATE_LIMITS, phone_number_id)  # type: ignore[misc]
        else:
            await self.redis.hset(keys.RATE_LIMITS, phone_number_id, str(mps))  # type: ignore[misc]

    async def mps(self, phone_number_id: str) -> float:
        """A number's configured throughput."""
        raw = await self.redis.hget(keys.RATE_LIMITS, phone_number_id)  # type: ignore[misc]
        return float(raw) if raw is not None else self.config.default_mps
