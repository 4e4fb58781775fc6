"""Redis Streams plumbing shared by the gateway and the step runtime: the client, the consumer group, the
key names (the one place they are spelled; documented in docs/dataplane.md) and the Lua scripts that make
each state change of a run atomic.

Keys: every key of a workflow shares the prefix ``as:{<namespace>/<workflow>}:`` (the braces make it one hash
slot, so the Lua scripts stay valid on a Redis Cluster too).

Scripts:
SUBMIT   (gateway) create the run record and enqueue the input on every source step's stream.
COMPLETE (worker)  publish a step's output to each next step (joining where a step has several
                   predecessors) or record it as a sink output, then XACK - all or nothing. A marker
                   ``done:<run>:<step>`` makes it idempotent: a message processed twice (reclaimed from a
                   slow consumer, or redelivered after a crash before the script ran) publishes once.
FAIL     (worker)  move a message to the dead-letter stream with its error, XACK, and fail the run once.
COMPLETE and FAIL delete the message they acknowledge when ``workers`` is the stream's only consumer group
(so an acknowledged payload does not stay in Redis); :func:`trim_acked` removes what every group has acked
otherwise. Delivery stays at least once: nothing unacknowledged is deleted.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# What a lost or restarting Redis raises: callers retry these (or answer 503), never crash on them.
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


def redis_client(url: str, max_connections: int = 64, pool_timeout_s: float = 5.0) -> aioredis.Redis:
    """A pooled client that retries a command on a fresh connection after a connection error.

    ``from_url`` leaves the pool without retries, so after a Redis restart every pooled connection failed
    once (20 of 20 concurrent commands in a probe; the gateway answered 503 to each). Retrying is safe
    for our writes: the Lua scripts are idempotent (run id / done markers).

    The pool blocks: past ``max_connections`` commands in flight, a command waits up to ``pool_timeout_s``
    for a connection instead of failing at once with "Too many connections" (redis-py's default pool, 100
    connections, failed 4-9 of 300 concurrent submits). A wait that runs out raises what
    :func:`pool_exhausted` recognises: the process is busy, Redis is not down."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        decode_responses=True,
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)


def pool_exhausted(e: BaseException) -> bool:
    """True when ``e`` says no pooled connection came free in time (busy), not that Redis is unreachable."""
    return isinstance(e, MaxConnectionsError) or (
        isinstance(e, RedisConnectionError) and isinstance(e.__cause__, asyncio.TimeoutError | TimeoutError)
    )


def next_id(stream_id: str) -> str:
    """The smallest stream id after ``stream_id`` (``ms-seq``)."""
    ms, _, seq = stream_id.partition("-")
    return f"{ms}-{int(seq or 0) + 1}"


async def trim_acked(r: aioredis.Redis, stream: str, groups: list[dict[str, Any]] | None = None) -> int:
    """Delete the entries every consumer group of ``stream`` has acknowledged; returns how many went.

    An entry is acknowledged by a group when it was delivered (id <= the group's last-delivered-id) and is
    not pending; so everything below the oldest pending id (or, with nothing pending, up to the last
    delivered) is done for that group, and what is below that point for every group can go. The COMPLETE
    and FAIL scripts already delete their own message when ``workers`` is the only group; this catches the
    rest (other groups, or messages acknowledged by hand)."""
    groups = groups if groups is not None else await r.xinfo_groups(stream)
    if not groups:
        return 0
    floor: str | None = None
    for g in groups:
        if int(g.get("pending") or 0) > 0:
            summary: Any = await r.xpending(stream, g["name"])
            low = str(summary["min"])
        else:
            low = next_id(str(g["last-delivered-id"]))
        if floor is None or _id_key(low) < _id_key(floor):
            floor = low
    if floor is None or floor == "0-1":
        return 0
    return int(await r.xtrim(stream, minid=floor, approximate=False))


async def trim_results(r: aioredis.Redis, p: str, retention_s: int) -> int:
    """Drop results-stream entries older than ``retention_s`` (gateways follow it live; run records keep
    the outcome for the result TTL)."""
    cut_ms = int(time.time() * 1000) - retention_s * 1000
    return int(await r.xtrim(results(p), minid=f"{cut_ms}-0", approximate=True))


def _id_key(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


async def ensure_group(r: aioredis.Redis, stream: str) -> None:
    """Create the consumer group (and the stream) unless it exists."""
    try:
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise


# ---- key names -----------------------------------------------------------------------------------------

GROUP = "workers"  # the consumer group on every step stream


def prefix(namespace: str, workflow: str) -> str:
    return f"as:{{{namespace}/{workflow}}}:"


def step_stream(p: str, step: str, lane: str = "normal") -> str:
    """A step's stream for one priority lane; the ``normal`` lane keeps the plain name."""
    return f"{p}step:{step}" if lane == "normal" else f"{p}step:{step}:{lane}"


def step_streams(p: str, step: str, lanes: tuple[str, ...]) -> list[str]:
    """A step's streams in the order workers consume them (highest lane first)."""
    return [step_stream(p, step, lane) for lane in lanes]


def dead_letter(p: str, step: str) -> str:
    return f"{p}dlq:{step}"


def results(p: str) -> str:
    return f"{p}results"


def run(p: str, run_id: str) -> str:
    return f"{p}run:{run_id}"


def join(p: str, run_id: str, step: str) -> str:
    return f"{p}join:{run_id}:{step}"


def done(p: str, run_id: str, step: str) -> str:
    return f"{p}done:{run_id}:{step}"


def inflight(p: str) -> str:
    return f"{p}inflight"


# ---- Lua scripts -----------------------------------------------------------------------------------

SUBMIT = """
-- KEYS: run, inflight, source streams...   ARGV: run_id, data, t0, prio, ttl, maxlen
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued', 'created', ARGV[3], 'prio', ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('INCR', KEYS[2])
for i = 3, #KEYS do
  redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[6], '*',
             'run', ARGV[1], 'data', ARGV[2], 't0', ARGV[3], 'prio', ARGV[4], 'from', '')
end
return 1
"""

ACK = """
-- acknowledge, and delete the entry when this group is the stream's only one (every group has acked it)
local function ack(stream, group, id)
  if redis.call('XACK', stream, group, id) == 1 then
    local groups = redis.pcall('XINFO', 'GROUPS', stream)
    if type(groups) == 'table' and groups.err == nil and #groups == 1 then
      redis.call('XDEL', stream, id)
    end
  end
end
"""

COMPLETE = (
    ACK
    + """
-- KEYS: own stream, done marker, run, results, inflight, then per next step: stream, join key
-- ARGV: group, msg_id, run_id, step, output, t0, prio, ttl, maxlen, nsinks, now, then per next: npreds
local ttl = tonumber(ARGV[8])
if not redis.call('SET', KEYS[2], '1', 'NX', 'EX', ttl) then
  ack(KEYS[1], ARGV[1], ARGV[2])
  return 0
end
local status = redis.call('HGET', KEYS[3], 'status')
if status == 'failed' or status == 'done' then
  ack(KEYS[1], ARGV[1], ARGV[2])
  return 2
end
local nnext = (#KEYS - 5) / 2
for i = 1, nnext do
  local stream = KEYS[4 + 2 * i]
  local joink = KEYS[5 + 2 * i]
  local npreds = tonumber(ARGV[11 + i])
  if npreds <= 1 then
    redis.call('XADD', stream, 'MAXLEN', '~', ARGV[9], '*',
               'run', ARGV[3], 'data', ARGV[5], 't0', ARGV[6], 'prio', ARGV[7], 'from', ARGV[4])
  else
    redis.call('HSET', joink, ARGV[4], ARGV[5])
    redis.call('EXPIRE', joink, ttl)
    if redis.call('HLEN', joink) >= npreds then
      local kv = redis.call('HGETALL', joink)
      local parts = {}
      for j = 1, #kv, 2 do parts[#parts + 1] = '"' .. kv[j] .. '":' .. kv[j + 1] end
      redis.call('XADD', stream, 'MAXLEN', '~', ARGV[9], '*', 'run', ARGV[3],
                 'data', '{' .. table.concat(parts, ',') .. '}', 't0', ARGV[6], 'prio', ARGV[7], 'from', '*')
      redis.call('DEL', joink)
    end
  end
end
local finished = 0
if nnext == 0 then
  redis.call('HSET', KEYS[3], 'out:' .. ARGV[4], ARGV[5])
  local n = redis.call('HINCRBY', KEYS[3], 'sinks_done', 1)
  if n >= tonumber(ARGV[10]) then
    local kv = redis.call('HGETALL', KEYS[3])
    local parts = {}
    for j = 1, #kv, 2 do
      if string.sub(kv[j], 1, 4) == 'out:' then
        parts[#parts + 1] = '"' .. string.sub(kv[j], 5) .. '":' .. kv[j + 1]
      end
    end
    redis.call('HSET', KEYS[3], 'status', 'done', 'finished', ARGV[11],
               'result', '{' .. table.concat(parts, ',') .. '}')
    redis.call('EXPIRE', KEYS[3], ttl)
    redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'run', ARGV[3], 'status', 'done')
    redis.call('DECR', KEYS[5])
    finished = 1
  end
end
ack(KEYS[1], ARGV[1], ARGV[2])
return 1 + 2 * finished
"""
)

FAIL = (
    ACK
    + """
-- KEYS: own stream, dlq, run, results, inflight, done marker
-- ARGV: group, msg_id, run_id, step, error, data, attempts, ttl, maxlen, now, dlq maxlen
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[11], '*', 'run', ARGV[3], 'step', ARGV[4],
           'error', ARGV[5], 'data', ARGV[6], 'attempts', ARGV[7], 'id', ARGV[2], 'failed_at', ARGV[10])
ack(KEYS[1], ARGV[1], ARGV[2])
if not redis.call('SET', KEYS[6], 'failed', 'NX', 'EX', tonumber(ARGV[8])) then return 0 end
local status = redis.call('HGET', KEYS[3], 'status')
if status == 'failed' or status == 'done' then return 0 end
redis.call('HSET', KEYS[3], 'status', 'failed', 'error', ARGV[4] .. ': ' .. ARGV[5], 'finished', ARGV[10])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[8]))
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[9], '*', 'run', ARGV[3], 'status', 'failed')
redis.call('DECR', KEYS[5])
return 1
"""
)
