"""Meta's rate limits, shared by every worker through Redis: per number, and per pair.

Lua implements GCRA rather than a library: the libraries we found (e.g. limits, aiolimiter)
either keep state in-process or answer only yes/no, while waq needs an atomic *reservation*
across two limits (the number's and the pair's), for a whole batch, that hands each message
its own slot. A lane's claim books the slots (``producer.transition_scripts.CLAIM``); this
module keeps what reacts to Meta and what operators set.

- The number's limit is spaced evenly (no burst), slightly under the configured rate
  (``safety``), so no one-second window ever holds more than Meta's limit.
- The pair's limit is GCRA with Meta's burst (45, borrowing from later) and interval (6 s).
- Meta's throttling answers divide the rate (130429 for the number, 4/80007 for everything)
  and the divisor decays back to 1 over ``recover_s``; 131056 pushes the pair's next slot
  4^x seconds out. Times come from Redis's clock, the same for every worker machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from redis.asyncio import Redis

from producer import keys
from producer.transition_scripts import SLOWDOWN_FACTOR

__all__ = ["APP_SCOPE", "RateConfig", "RateLimiter"]

APP_SCOPE: Final = "app"

_NOW = (
    "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6\n"
    # A unix time as text to the microsecond (tostring keeps 14 digits: 0.1 ms, and a slot
    # rounded down on every reservation runs the limiter fast).
    "local function t6(x) return string.format('%.6f', x) end\n"
)

# KEYS: slowdown hash, throttled index. ARGV: recover s, max factor, cooldown s, scope.
# Doubles the current (decayed) factor, once per cooldown: the requests in flight when Meta
# first refused are refused too, and they are one signal, not several. The index learns when
# the scope's slowdown wears off, and forgets scopes whose slowdown has.
_SLOW_DOWN: Final = (
    _NOW
    + SLOWDOWN_FACTOR
    + """
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '0')
if now - at < tonumber(ARGV[3]) then return tostring(factor(KEYS[1], tonumber(ARGV[1]), now)) end
local f = math.min(factor(KEYS[1], tonumber(ARGV[1]), now) * 2, tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'factor', tostring(f), 'at', t6(now))
redis.call('EXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1])) + 60)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[1]), ARGV[4])
return tostring(f)
"""
)

# KEYS: slowdown hash. ARGV: recover s. The current (decayed) divisor, for operators.
_SLOWDOWN: Final = (
    _NOW + SLOWDOWN_FACTOR + "return tostring(factor(KEYS[1], tonumber(ARGV[1]), now))\n"
)

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
    # A slot missed by more than this is given up (worker.lane): sends then stay within
    # (slot, slot + tolerance], so one second holds at most rate * (1 - safety) + the few
    # messages of that tolerance, under the limit.
    late_tolerance_s: float = 0.01
    recover_s: float = 60.0
    max_slowdown: float = 16.0
    slowdown_cooldown_s: float = 1.0
    bulk_share: float = 0.2
    """The least share of a number's sends that bulk traffic gets while interactive waits."""


class RateLimiter:
    """Meta's throttling reactions and the per-number rates.

    The slots themselves are booked by a lane's claim (``producer.transitions``).
    """

    def __init__(self, redis: Redis, config: RateConfig | None = None) -> None:
        self.redis = redis
        self.config = config or RateConfig()
        self._slow_down = redis.register_script(_SLOW_DOWN)
        self._slowdown = redis.register_script(_SLOWDOWN)
        self._back_off_pair = redis.register_script(_BACK_OFF_PAIR)
        self._release_pair = redis.register_script(_RELEASE_PAIR)
        # The pair's spacing gets the same margin as the number's: arrival jitter must not
        # bring a message in before Meta's bucket has refilled.
        self._pair_interval_s = self.config.pair_interval_s * (1 + self.config.safety)

    async def slow_down(self, scope: str) -> float:
        """Halve the rate of a number (or ``APP_SCOPE``: every number); returns the divisor."""
        factor = await self._slow_down(
            keys=[keys.slowdown(scope), keys.THROTTLED],
            args=[
                self.config.recover_s,
                self.config.max_slowdown,
                self.config.slowdown_cooldown_s,
                scope,
            ],
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
