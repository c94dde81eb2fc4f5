"""Caps, the fair order and the running counts shared through Redis by every gateway (and
worker) that points at the same Redis (`--redis`).

Every step is one Lua script, so it is atomic in Redis:

- **Slots are leases.** An upstream's running calls are a sorted set of lease ids scored by
  their expiry (Redis's own clock). A gateway renews its leases every LEASE_SECONDS / 3 while
  its calls run; a gateway that dies (kill -9) stops renewing, and its slots are free again
  within LEASE_SECONDS. Expired leases are dropped before every count, so the cap counts only
  live ones and is never exceeded by a dead gateway's leftovers being reused too early.
- **The fair order is shared.** A call that finds no free slot (or finds others waiting for
  it) joins a sorted set per upstream and class, scored by its start tag of start-time fair
  queueing (the same shares as the local line: each tenant's virtual finish advances by a
  call's slot-seconds over its weight, corrected at release by the time really held). FIFO
  order scores by arrival. A slot freed anywhere goes to the head, whichever gateway it waits
  in: the releasing gateway's pump grants it (a lease, and a grant note the waiter's gateway
  collects at its next pump, every PUMP_SECONDS while it has calls waiting).
- **Dead waiters leave by themselves.** Each gateway keeps its waiters alive (a score in a
  sorted set, renewed every second); a head whose gateway stopped renewing is dropped.

If Redis cannot be reached, or a step fails in any other way, the gateway uses its local
line and caps (queueing.line) for RETRY_SECONDS before trying Redis again; calls waiting in
the shared queue then look again, locally. /health and the log say so. It never refuses a
call because Redis is away.

Requires the `redis` extra.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .place import RANK, Place
from .sharing import SharedDown

log = logging.getLogger("ollama_host.queue")
T = TypeVar("T")

# Anything a Redis step raises leaves the call to the local line (see access/redis_shared.py
# for the zoo of exceptions a connection reset surfaces as). CancelledError is not one.
FAILURE = Exception
TIMEOUT = 0.5
RETRY_SECONDS = 1.0
LEASE_SECONDS = 3.0
ALIVE_SECONDS = 3.0
PUMP_SECONDS = 0.05
# Grant notes a dead gateway never collects expire after this.
GRANT_MS = 60_000

_COMMON = """
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function drop(id)
  local ups = redis.call('HGET', p .. 'w:' .. id, 'ups')
  if ups then
    for u in string.gmatch(ups, '[^,]+') do
      redis.call('ZREM', p .. 'wait:' .. u .. ':0', id)
      redis.call('ZREM', p .. 'wait:' .. u .. ':1', id)
    end
  end
  redis.call('ZREM', p .. 'alive', id)
  redis.call('DEL', p .. 'w:' .. id)
end

local function head(u)
  for r = 0, 1 do
    local k = p .. 'wait:' .. u .. ':' .. r
    while true do
      local first = redis.call('ZRANGE', k, 0, 0)
      if #first == 0 then break end
      local id = first[1]
      local alive = redis.call('ZSCORE', p .. 'alive', id)
      if alive and tonumber(alive) >= now then return id end
      drop(id)
      redis.call('ZREM', k, id)
    end
  end
  return nil
end

local function free(u, cap)
  local k = p .. 'lease:' .. u
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  return redis.call('ZCARD', k) < cap
end

local function charge(rank, tenant, cost, weight, handed)
  local v = tonumber(redis.call('HGET', p .. 'clock', rank) or '0')
  local f = tonumber(redis.call('HGET', p .. 'fin', rank .. ':' .. tenant) or '0')
  local s = math.max(v, f)
  redis.call('HSET', p .. 'fin', rank .. ':' .. tenant, tostring(s + cost / weight))
  if handed and s > v then redis.call('HSET', p .. 'clock', rank, tostring(s)) end
  return s
end
"""

# ARGV: prefix, id, tenant, rank, weight, cost, lease_ms, alive_ms, order, info, n,
# then n pairs (upstream, cap) in the order of preference.
# Returns the upstream whose slot was taken, or false (the call waits, queued).
_TAKE = (
    _COMMON
    + """
local id, tenant, rank = ARGV[2], ARGV[3], ARGV[4]
local weight, cost = tonumber(ARGV[5]), tonumber(ARGV[6])
local lease_ms, alive_ms, order, info = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9], ARGV[10]
local n = tonumber(ARGV[11])
local names = {}
for i = 0, n - 1 do
  local u, cap = ARGV[12 + 2 * i], tonumber(ARGV[13 + 2 * i])
  names[#names + 1] = u
  if head(u) == nil and free(u, cap) then
    redis.call('ZADD', p .. 'lease:' .. u, now + lease_ms, id)
    redis.call('HSET', p .. 'info', id, info)
    redis.call('HSET', p .. 'granted', id, now)
    charge(rank, tenant, cost, weight, false)
    return u
  end
end
local score
if order == 'fifo' then
  score = redis.call('INCR', p .. 'seq')
else
  local v = tonumber(redis.call('HGET', p .. 'clock', rank) or '0')
  local f = tonumber(redis.call('HGET', p .. 'fin', rank .. ':' .. tenant) or '0')
  score = math.max(v, f)
  redis.call('HSET', p .. 'fin', rank .. ':' .. tenant, tostring(score + cost / weight))
end
for _, u in ipairs(names) do
  redis.call('ZADD', p .. 'wait:' .. u .. ':' .. rank, score, id)
end
redis.call('HSET', p .. 'w:' .. id, 'ups', table.concat(names, ','), 'rank', rank,
  's', tostring(score), 'tenant', tenant, 'cost', tostring(cost / weight), 'order', order)
redis.call('PEXPIRE', p .. 'w:' .. id, 86400000)
redis.call('HSET', p .. 'info', id, info)
redis.call('ZADD', p .. 'alive', now + alive_ms, id)
return false
"""
)

# ARGV: prefix, lease_ms, alive_ms (0: no renewal now), n, n pairs (upstream, cap), m, my m
# waiting ids. Hands every free slot to its head; returns, for each of mine, its grant
# (upstream) or its position ("#<calls ahead>"), in order.
_PUMP = (
    _COMMON
    + """
local lease_ms, alive_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local base = 5 + 2 * n
local m = tonumber(ARGV[base])
if alive_ms > 0 then
  for j = 1, m do
    redis.call('ZADD', p .. 'alive', 'XX', now + alive_ms, ARGV[base + j])
  end
end
for i = 0, n - 1 do
  local u, cap = ARGV[5 + 2 * i], tonumber(ARGV[6 + 2 * i])
  while free(u, cap) do
    local h = head(u)
    if h == nil then break end
    local w = redis.call('HMGET', p .. 'w:' .. h, 'rank', 's')
    drop(h)
    redis.call('ZADD', p .. 'lease:' .. u, now + lease_ms, h)
    redis.call('HSET', p .. 'granted', h, now)
    redis.call('SET', p .. 'g:' .. h, u, 'PX', """
    + str(GRANT_MS)
    + """)
    if w[1] then
      local v = tonumber(redis.call('HGET', p .. 'clock', w[1]) or '0')
      if tonumber(w[2]) > v then redis.call('HSET', p .. 'clock', w[1], w[2]) end
    end
  end
end
local out = {}
for j = 1, m do
  local id = ARGV[base + j]
  local g = redis.call('GET', p .. 'g:' .. id)
  if g then
    redis.call('DEL', p .. 'g:' .. id)
    out[#out + 1] = g
  else
    local w = redis.call('HMGET', p .. 'w:' .. id, 'ups', 'rank')
    local ahead = 0
    if w[1] then
      local u = string.match(w[1], '[^,]+')
      local rank = tonumber(w[2])
      if rank == 1 then ahead = redis.call('ZCARD', p .. 'wait:' .. u .. ':0') end
      ahead = ahead + (redis.call('ZRANK', p .. 'wait:' .. u .. ':' .. rank, id) or 0)
      out[#out + 1] = '#' .. ahead
    else
      out[#out + 1] = '-'
    end
  end
end
return out
"""
)

# ARGV: prefix, id. A waiter that gives up: out of the line (its tenant's charge given back
# if it was its last), or, if a slot was granted it meanwhile, that lease given back.
# Returns the upstream of a lease given back, or false.
_CANCEL = (
    _COMMON
    + """
local id = ARGV[2]
local g = redis.call('GET', p .. 'g:' .. id)
redis.call('HDEL', p .. 'info', id)
redis.call('HDEL', p .. 'granted', id)
if g then
  redis.call('DEL', p .. 'g:' .. id)
  redis.call('ZREM', p .. 'lease:' .. g, id)
  return g
end
local w = redis.call('HMGET', p .. 'w:' .. id, 'rank', 'tenant', 's', 'cost', 'order')
if w[1] and w[5] == 'fair' then
  local key = w[1] .. ':' .. w[2]
  local f = tonumber(redis.call('HGET', p .. 'fin', key) or '0')
  if math.abs(f - (tonumber(w[3]) + tonumber(w[4]))) < 1e-9 then
    redis.call('HSET', p .. 'fin', key, w[3])
  end
end
drop(id)
return false
"""
)

# ARGV: prefix, lease_ms, n, n pairs (upstream, id): renew each lease that is still there.
_RENEW = (
    _COMMON
    + """
local lease_ms, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local lost = 0
for i = 0, n - 1 do
  local u, id = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  if redis.call('ZADD', p .. 'lease:' .. u, 'XX', 'CH', now + lease_ms, id) == 0 then
    if redis.call('ZSCORE', p .. 'lease:' .. u, id) == false then lost = lost + 1 end
  end
end
return lost
"""
)

# ARGV: prefix, upstream, id, rank, tenant, correction. A call ended: its lease goes, its
# tenant's charge is corrected by the time it really held the slot.
_RELEASE = (
    _COMMON
    + """
redis.call('ZREM', p .. 'lease:' .. ARGV[2], ARGV[3])
redis.call('HDEL', p .. 'info', ARGV[3])
redis.call('HDEL', p .. 'granted', ARGV[3])
local key = ARGV[4] .. ':' .. ARGV[5]
if redis.call('HEXISTS', p .. 'fin', key) == 1 then
  redis.call('HINCRBYFLOAT', p .. 'fin', key, ARGV[6])
end
return 1
"""
)

# ARGV: prefix, n, n upstreams: each one's live leases and waiters with what is known of them.
_VIEW = (
    _COMMON
    + """
local n = tonumber(ARGV[2])
local out = {}
for i = 1, n do
  local u = ARGV[2 + i]
  local lk = p .. 'lease:' .. u
  redis.call('ZREMRANGEBYSCORE', lk, '-inf', now)
  local running = {}
  for _, id in ipairs(redis.call('ZRANGE', lk, 0, -1)) do
    local info = redis.call('HGET', p .. 'info', id) or ''
    local at = redis.call('HGET', p .. 'granted', id) or ''
    running[#running + 1] = info .. string.char(31) .. at
  end
  local waiting = {}
  for r = 0, 1 do
    for _, id in ipairs(redis.call('ZRANGE', p .. 'wait:' .. u .. ':' .. r, 0, -1)) do
      local alive = redis.call('ZSCORE', p .. 'alive', id)
      if alive and tonumber(alive) >= now then
        waiting[#waiting + 1] = redis.call('HGET', p .. 'info', id) or ''
      end
    end
  end
  out[#out + 1] = {u, running, waiting, tostring(now)}
end
return out
"""
)


class SharedStanding:
    """Where a call waiting in the shared queue stands, as the last pump found."""

    __slots__ = ("ahead",)

    def __init__(self) -> None:
        self.ahead: int | None = None

    def standing(self, place: Place) -> tuple[int, int] | None:
        return None if self.ahead is None else (self.ahead + 1, self.ahead)


class _Waiting:
    __slots__ = ("future", "queued", "standing")

    def __init__(self, future: asyncio.Future[str | None], standing: SharedStanding) -> None:
        self.future = future
        self.standing = standing
        # In the shared line: its take found no free slot (until then it is only asking).
        self.queued = False


def redacted(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class SharedSlots:
    """The slots and the fair queue of a router's upstreams, in Redis."""

    def __init__(self, url: str, scope: str) -> None:
        self.address = redacted(url)
        self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(
            url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT, retry=Retry(NoBackoff(), 0)
        )
        self._prefix = f"ollama-host:{scope}:q:"
        self._me = secrets.token_hex(6)
        self._seq = 0
        self._take = self._client.register_script(_TAKE)
        self._pump_script = self._client.register_script(_PUMP)
        self._cancel = self._client.register_script(_CANCEL)
        self._renew_script = self._client.register_script(_RENEW)
        self._release = self._client.register_script(_RELEASE)
        self._view = self._client.register_script(_VIEW)
        self._waiting: dict[str, _Waiting] = {}
        # Leases this gateway holds: id -> upstream.
        self.held: dict[str, str] = {}
        self._caps: Callable[[], list[tuple[str, int]]] = list
        self._down_until = 0.0
        self.error: str | None = None
        self._pumping: asyncio.Task[None] | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._kick = asyncio.Event()
        self._alive_at = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- state --------------------------------------------------------------------------------

    def watch(self, caps: Callable[[], list[tuple[str, int]]]) -> None:
        """Where the capped upstreams and their caps are read from, at every pump."""
        self._caps = caps

    @property
    def usable(self) -> bool:
        return time.monotonic() >= self._down_until

    def describe(self) -> str:
        if self.error is not None:
            return f"local: {self.error}"
        return f"redis at {self.address}"

    def waiting_count(self) -> int:
        """This gateway's calls in the shared line (not those still asking for a slot)."""
        return sum(waiting.queued for waiting in self._waiting.values())

    async def _step(self, work: Callable[[], Awaitable[T]]) -> T:
        if not self.usable:
            raise SharedDown(self.error or "Redis is away")
        try:
            result = await work()
        except FAILURE as exc:
            self._went_down(exc)
            raise SharedDown(str(exc)) from None
        if self.error is not None:
            log.warning(
                "Redis at %s answers again: caps and the queue are shared again", self.address
            )
            self.error = None
        return result

    def _went_down(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_SECONDS
        error = (
            f"Redis at {self.address} cannot be reached ({type(exc).__name__}: {exc}); caps "
            "and the fair queue are this gateway's alone until it is back"
        )
        if error != self.error:
            log.error("%s", error)
        self.error = error
        # Calls waiting in the shared queue look again, in the local one.
        for waiting in list(self._waiting.values()):
            if not waiting.future.done():
                waiting.future.set_result(None)
        self._waiting.clear()

    async def check(self) -> None:
        async def ping() -> None:
            await self._client.ping()

        with contextlib.suppress(SharedDown):
            await self._step(ping)
        if self.error is None:
            log.info(
                "upstream caps and the fair queue are shared through Redis at %s", self.address
            )

    # -- a call ---------------------------------------------------------------------------------

    def new_id(self) -> str:
        self._seq += 1
        return f"{self._me}.{self._seq}"

    async def take(
        self,
        call_id: str,
        place: Place,
        ups: Sequence[tuple[str, int]],
        *,
        cost: float,
        order: str,
    ) -> str | None:
        """The upstream whose slot `call_id` took at once, or None: it waits (see wait())."""
        info = "\x1f".join(
            [
                place.key_label or "",
                place.project or "",
                place.priority,
                f"{time.time():.3f}",
                place.model,
            ]
        )
        args: list[Any] = [
            self._prefix,
            call_id,
            place.tenant,
            RANK[place.priority],
            place.weight,
            cost,
            int(LEASE_SECONDS * 1000),
            int(ALIVE_SECONDS * 1000),
            order,
            info,
            len(ups),
        ]
        for name, cap in ups:
            args += [name, cap]
        waiting = self._waiting.get(call_id)
        if waiting is None:
            loop = asyncio.get_running_loop()
            waiting = self._waiting[call_id] = _Waiting(loop.create_future(), SharedStanding())

        async def go() -> Any:
            return await self._take(args=args)

        try:
            got = await self._step(go)
        except BaseException:
            self._waiting.pop(call_id, None)
            raise
        if got:
            self._waiting.pop(call_id, None)
            name = got.decode() if isinstance(got, bytes) else str(got)
            self._hold(call_id, name)
            return name
        waiting.queued = True
        self._start_pump()
        self._kick.set()
        return None

    def standing_of(self, call_id: str) -> SharedStanding | None:
        waiting = self._waiting.get(call_id)
        return None if waiting is None else waiting.standing

    async def wait(self, call_id: str) -> str | None:
        """The upstream whose slot the waiting call got; None: Redis went away, look again."""
        waiting = self._waiting.get(call_id)
        if waiting is None:
            return None
        return await asyncio.shield(waiting.future)

    async def cancel(self, call_id: str) -> None:
        """The waiting call gave up: out of the shared line, and any slot just granted back."""
        waiting = self._waiting.pop(call_id, None)
        if waiting is not None and waiting.future.done() and not waiting.future.cancelled():
            name = waiting.future.result()
            if name is not None:
                self.release(call_id, name, rank=0, tenant="", correction=0.0)
            return

        async def go() -> Any:
            return await self._cancel(args=[self._prefix, call_id])

        with contextlib.suppress(SharedDown):
            if await self._step(go):
                self._kick.set()

    def cancel_soon(self, call_id: str) -> None:
        """cancel(), in the background: a call that gives up does not wait for Redis."""
        self._background(self.cancel(call_id))

    def _background(self, work: Awaitable[None]) -> None:
        async def run() -> None:
            await work

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _hold(self, call_id: str, upstream: str) -> None:
        self.held[call_id] = upstream
        if self._renewing is None or self._renewing.done():
            self._renewing = asyncio.get_running_loop().create_task(self._renew_loop())

    def release(
        self, call_id: str, upstream: str, *, rank: int, tenant: str, correction: float
    ) -> None:
        """The call ended: its lease goes back (in the background, at once)."""
        self.held.pop(call_id, None)

        async def go() -> None:
            async def step() -> Any:
                return await self._release(
                    args=[self._prefix, upstream, call_id, rank, tenant, correction]
                )

            with contextlib.suppress(SharedDown):
                await self._step(step)
                await self._pump_once(force=True)

        self._background(go())

    # -- background ---------------------------------------------------------------------------

    def _start_pump(self) -> None:
        if self._pumping is None or self._pumping.done():
            self._pumping = asyncio.get_running_loop().create_task(self._pump_loop())

    async def _pump_loop(self) -> None:
        while self._waiting:
            with contextlib.suppress(SharedDown):
                await self._pump_once()
            self._kick.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PUMP_SECONDS):
                    await self._kick.wait()

    async def _pump_once(self, *, force: bool = False) -> None:
        caps = self._caps()
        mine = list(self._waiting)
        if not caps or (not mine and not force):
            return
        now = time.monotonic()
        alive = 0
        if now - self._alive_at >= ALIVE_SECONDS / 3:
            alive = int(ALIVE_SECONDS * 1000)
            self._alive_at = now
        args: list[Any] = [self._prefix, int(LEASE_SECONDS * 1000), alive, len(caps)]
        for name, cap in caps:
            args += [name, cap]
        args.append(len(mine))
        args += mine

        async def go() -> Any:
            return await self._pump_script(args=args)

        found = await self._step(go)
        for call_id, raw in zip(mine, found, strict=True):
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            waiting = self._waiting.get(call_id)
            if text.startswith("#"):
                if waiting is not None:
                    waiting.standing.ahead = int(text[1:])
                continue
            if text == "-":
                continue
            if waiting is None or waiting.future.done():
                # Granted to a call that gave up meanwhile: give the slot back.
                self.release(call_id, text, rank=0, tenant="", correction=0.0)
                continue
            del self._waiting[call_id]
            self._hold(call_id, text)
            waiting.future.set_result(text)

    async def _renew_loop(self) -> None:
        while self.held:
            await asyncio.sleep(LEASE_SECONDS / 3)
            pairs = list(self.held.items())
            if not pairs:
                continue
            args: list[Any] = [self._prefix, int(LEASE_SECONDS * 1000), len(pairs)]
            for call_id, upstream in pairs:
                args += [upstream, call_id]

            async def go(args: list[Any] = args) -> Any:
                return await self._renew_script(args=args)

            with contextlib.suppress(SharedDown):
                lost = int(await self._step(go))
                if lost:
                    log.warning("%d upstream slot leases expired before they were renewed", lost)

    async def view(self, upstreams: Sequence[str]) -> list[tuple[str, list[str], list[str], float]]:
        """Per upstream: its running calls' and waiting calls' descriptions, and Redis's time."""

        async def go() -> Any:
            return await self._view(args=[self._prefix, len(upstreams), *upstreams])

        found = await self._step(go)
        out = []
        for entry in found:
            name = entry[0].decode()
            running = [x.decode() for x in entry[1]]
            waiting = [x.decode() for x in entry[2]]
            out.append((name, running, waiting, float(entry[3].decode()) / 1000))
        return out

    async def aclose(self) -> None:
        for task in (self._pumping, self._renewing, *self._tasks):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # Give back what this gateway holds, if Redis is there to take it.
        for call_id, upstream in list(self.held.items()):
            with contextlib.suppress(FAILURE):
                await self._release(args=[self._prefix, upstream, call_id, 0, "", 0.0])
        self.held.clear()
        with contextlib.suppress(FAILURE):
            await self._client.aclose()
