"""Limits and stream tickets shared through Redis by every gateway with the same keys.

`RedisShared` is both a `Counters` (access.limits) and a `Tickets` (access.tickets). Each
step is atomic in Redis, so two gateways never both admit the last request of a minute:

- requests per minute: the same token bucket as MemoryCounters, in a Lua script that reads
  Redis's clock, so every gateway refills it alike;
- tokens per UTC day: INCRBY in a MULTI with the key's expiry;
- GPU-seconds per UTC day and calendar month: whole microseconds, INCRBY on both in one MULTI
  with their expiries, read back with one MGET;
- open streams: a hash per name, one field per gateway process holding its own count; a Lua
  script admits a stream if the live gateways' counts leave room. A gateway's fields count
  only while its heartbeat key lives (HEARTBEAT_SECONDS), so a gateway killed with streams
  open gives its places back by itself;
- tickets: SET with an expiry, redeemed by GETDEL (once), under the ticket's hash.

If Redis cannot be reached, or a step fails in any other way, every step falls back to this
process's own counters for RETRY_SECONDS before trying Redis again: the gateway never fails
or refuses a call because its counter store fails. /health and the log say so, and each
admission decided that way is counted and marked (access.limits.counted_alone). Keys are
named `ollama-host:SCOPE:...`, SCOPE being the access scope (the database's, when keys live
in PostgreSQL).

Requires the `redis` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .limits import MICROS, CountersHealth, MemoryCounters, counted_alone, utc_day, utc_month
from .tickets import TICKET_SECONDS, MemoryTickets

log = logging.getLogger("ollama_host.limits")
T = TypeVar("T")

# What a failing step of the counter store is caught as: anything. redis-py raises its own
# errors and OSError for most failures, but a connection reset under a command in flight
# also surfaces as uvloop's RuntimeError ("unable to perform operation on <TCPTransport
# closed=True ...>") or as redis-py's AttributeError (a writer another task's disconnect set
# to None), and each was a 500 for the caller. The counter store is there to share limits;
# whatever it raises must leave the call to the gateway's own counts, never fail it.
# (CancelledError is not an Exception, so a call that is cancelled stays cancelled.)
FAILURE = Exception

TIMEOUT = 0.5
RETRY_SECONDS = 1.0
HEARTBEAT_SECONDS = 5.0
ALIVE_MS = 15_000
DAY_MS = 2 * 86_400_000
MONTH_MS = 32 * 86_400_000

_TAKE = """
local rate = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local level, last = rate, now
local found = redis.call('HMGET', KEYS[1], 'level', 'last')
if found[1] then
  level = tonumber(found[1])
  last = tonumber(found[2])
end
level = math.min(rate, level + (now - last) * rate / 60.0)
local wait = 0
if level < 1 then
  wait = (1 - level) * 60.0 / rate
else
  level = level - 1
end
redis.call('HSET', KEYS[1], 'level', tostring(level), 'last', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return tostring(wait)
"""

# KEYS[1]: the name's hash of open streams. ARGV: this gateway, its count after entering,
# the limit (0: none), the prefix of heartbeat keys, how long a heartbeat lives (ms).
_ENTER = """
local me, mine, limit, alive = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
redis.call('SET', alive .. me, '1', 'PX', ARGV[5])
local others = 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  local gateway = fields[i]
  if gateway ~= me then
    if redis.call('EXISTS', alive .. gateway) == 1 then
      others = others + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[1], gateway)
    end
  end
end
if limit > 0 and others + mine > limit then
  return 0
end
redis.call('HSET', KEYS[1], me, mine)
redis.call('PEXPIRE', KEYS[1], 86400000)
return 1
"""


def redacted(url: str) -> str:
    """The address without its password, to show."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_url(url: str) -> str | None:
    """Why `url` is not a Redis address, or None."""
    try:
        redis.asyncio.Redis.from_url(url)
    except ValueError:
        return "--redis must be a Redis address: redis://HOST:PORT/DB (or rediss://, unix://)"
    return None


class RedisShared:
    """Counters and tickets in Redis, with this process's own as the fallback."""

    def __init__(self, url: str, scope: str) -> None:
        self.address = redacted(url)
        # No retries inside the client: while Redis is away, a call must not wait on
        # backoffs; the fallback to local counters is the retry.
        self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url,
            socket_connect_timeout=TIMEOUT,
            socket_timeout=TIMEOUT,
            retry=Retry(NoBackoff(), 0),
        )
        self._prefix = f"ollama-host:{scope}:"
        self._me = secrets.token_hex(8)  # this gateway process, in the stream hashes
        self._take_script = self._client.register_script(_TAKE)
        self._enter_script = self._client.register_script(_ENTER)
        self.local = MemoryCounters()
        self._local_tickets = MemoryTickets()
        # Streams this process holds open, by name, wherever they were counted.
        self._open: dict[str, int] = {}
        self._down_until = 0.0
        self.error: str | None = None
        self._beat: asyncio.Task[None] | None = None

    def _key(self, *parts: str) -> str:
        return self._prefix + ":".join(parts)

    async def _shared(
        self, remote: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]
    ) -> T:
        """`remote()` in Redis, or `local()` while Redis is away."""
        if time.monotonic() < self._down_until:
            counted_alone()
            return await local()
        try:
            result = await remote()
        except FAILURE as exc:
            self._went_down(exc)
            # Close what the outage broke now, while the loop that opened it runs: the idle
            # connections only. Closing those in use pulled them from under other calls'
            # commands in flight, which then failed in ways redis-py does not wrap; each of
            # those fails and is closed by its own call.
            with contextlib.suppress(FAILURE):
                await self._client.connection_pool.disconnect(inuse_connections=False)
            counted_alone()
            return await local()
        if self.error is not None:
            log.warning("Redis at %s answers again: limits are shared again", self.address)
            self.error = None
        return result

    def _went_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_SECONDS
        error = (
            f"Redis at {self.address} cannot be reached ({type(exc).__name__}: {exc}); "
            "limits are counted by each gateway alone until it is back"
        )
        if error != self.error:
            log.error("%s", error)
        self.error = error

    def health(self) -> CountersHealth:
        return CountersHealth(
            status="degraded" if self.error else "ok", shared=self.address, error=self.error
        )

    async def check(self) -> None:
        """Try Redis now (at startup), so that the log says at once whether it answers."""

        async def ping() -> None:
            await self._client.ping()

        await self._shared(ping, _nothing)
        if self.error is None:
            log.info("limits and stream tickets are shared through Redis at %s", self.address)

    # -- Counters ------------------------------------------------------------------------------

    async def take(self, name: str, rate: int) -> float:
        async def remote() -> float:
            wait = await self._take_script(keys=[self._key("rpm", name)], args=[rate])
            return float(wait)

        return await self._shared(remote, lambda: self.local.take(name, rate))

    async def spent_today(self, name: str) -> int:
        async def remote() -> int:
            found = await self._client.get(self._key("day", str(utc_day()), name))
            return int(found or 0)

        return await self._shared(remote, lambda: self.local.spent_today(name))

    async def spend(self, name: str, tokens: int) -> None:
        async def remote() -> None:
            key = self._key("day", str(utc_day()), name)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(key, tokens)
                pipe.pexpire(key, DAY_MS)
                await pipe.execute()

        # Counted locally too: if Redis goes away, the local count carries on from here.
        await self.local.spend(name, tokens)
        await self._shared(remote, _nothing)

    def _gpu_keys(self, name: str) -> tuple[str, str]:
        return (
            self._key("gpu-day", str(utc_day()), name),
            self._key("gpu-month", str(utc_month()), name),
        )

    async def gpu_used(self, name: str) -> tuple[float, float]:
        async def remote() -> tuple[float, float]:
            day, month = await self._client.mget(self._gpu_keys(name))
            return int(day or 0) / MICROS, int(month or 0) / MICROS

        return await self._shared(remote, lambda: self.local.gpu_used(name))

    async def gpu_spend(self, name: str, seconds: float) -> None:
        micros = round(seconds * MICROS)

        async def remote() -> None:
            day, month = self._gpu_keys(name)
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incrby(day, micros)
                pipe.pexpire(day, DAY_MS)
                pipe.incrby(month, micros)
                pipe.pexpire(month, MONTH_MS)
                await pipe.execute()

        # Counted locally too, as tokens are: if Redis goes away, the local count carries on.
        await self.local.gpu_spend(name, seconds)
        await self._shared(remote, _nothing)

    async def enter(self, name: str, limit: int) -> bool:
        mine = self._open.get(name, 0) + 1

        async def remote() -> bool:
            self._heartbeat()
            admitted = await self._enter_script(
                keys=[self._key("streams", name)],
                args=[self._me, mine, limit, self._key("alive", ""), ALIVE_MS],
            )
            return bool(admitted)

        async def alone() -> bool:
            # Without Redis, this gateway can only count its own streams.
            return limit <= 0 or mine <= limit

        if await self._shared(remote, alone):
            self._open[name] = mine
            return True
        return False

    async def leave(self, name: str) -> None:
        mine = self._open.get(name, 0) - 1
        if mine > 0:
            self._open[name] = mine
        else:
            self._open.pop(name, None)
            mine = 0
        await self._shared(lambda: self._set_open(name, mine), _nothing)

    async def _set_open(self, name: str, mine: int) -> None:
        key = self._key("streams", name)
        if mine:
            await self._client.hset(key, self._me, str(mine))
        else:
            await self._client.hdel(key, self._me)

    def _heartbeat(self) -> None:
        if self._beat is None or self._beat.done():
            self._beat = asyncio.get_running_loop().create_task(self._beating())

    async def _beating(self) -> None:
        """Keep this gateway's stream counts alive in Redis, and true after an outage."""
        while self._open:

            async def beat() -> None:
                await self._client.set(self._key("alive", self._me), "1", px=ALIVE_MS)
                for name, mine in list(self._open.items()):
                    await self._set_open(name, mine)

            await self._shared(beat, _nothing)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    # -- Tickets -------------------------------------------------------------------------------

    def _ticket_key(self, ticket: str) -> str:
        # Under its hash: whoever reads Redis cannot use a live ticket.
        return self._key("ticket", hashlib.sha256(ticket.encode()).hexdigest())

    async def issue(self, holder: str) -> str:
        ticket = secrets.token_urlsafe(24)

        async def remote() -> str:
            await self._client.set(self._ticket_key(ticket), holder, px=int(TICKET_SECONDS * 1000))
            return ticket

        return await self._shared(remote, lambda: self._local_tickets.issue(holder))

    async def redeem(self, ticket: str) -> str | None:
        async def remote() -> str | None:
            found: Any = await self._client.getdel(self._ticket_key(ticket))
            return found.decode() if isinstance(found, bytes) else found

        # A ticket issued while Redis was away is in this process: look there too.
        holder = await self._shared(remote, _none)
        return holder if holder is not None else self._local_tickets.redeem_now(ticket)

    async def aclose(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat
        # Give back the places this gateway still holds, if Redis is there to take them.
        for name in list(self._open):
            self._open.pop(name)
            with contextlib.suppress(FAILURE):
                await self._set_open(name, 0)
        with contextlib.suppress(FAILURE):
            await self._client.aclose()


async def _nothing() -> None:
    return None


async def _none() -> str | None:
    return None
