"""A step's result cache in Redis: a repeated input skips the whole step (handler and model calls).

Key. ``cache_key`` is the SHA-256 of length-framed fields: a format tag, ``version``
(``AGENTSCALE_RESULT_CACHE_VERSION``, which the operator hashes from what the step and its model server
run and the spec's ``resultCache.version``), the step, its model, the predecessor the message came from,
and the input as canonical JSON (keys sorted, no whitespace). Every field carries its length, so no two
different inputs frame to the same bytes (``{"q":"ab","x":"c"}`` and ``{"q":"a","x":"bc"}`` differ in
their JSON, and a field can never run into the next); two different inputs share a key only through a
SHA-256 collision. Equal inputs written differently (key order, spacing) share a key; ``1`` and ``1.0`` do
not (a miss, never a wrong hit).

Storage, all under the workflow's prefix (one hash slot, like every key of the workflow):
``cache:<step>:e:<sha256>`` holds the output JSON and expires ``ttl_s`` after it was written (a hit does not
extend it, so no result older than the TTL is served); ``cache:<step>:lru`` is a sorted set of the entries by
last use (Redis server time, microseconds). GET (a hit refreshes the entry's place) and PUT (store, then evict
the least recently used past ``max_entries``) are Lua scripts, so the bound holds under any number of
workers. An entry that expired stays in the set until it is the oldest or is looked up: the set can hold
more names than live entries, never fewer, so ``max_entries`` bounds the live entries (evictions count only
entries that still existed). Outputs over ``max_entry_bytes`` are not stored: ``max_entries x
max_entry_bytes`` bounds the cache's memory. The PUT script deletes evicted entries by names it builds from
the prefix (same hash slot, so also on a Redis Cluster).

Failures. The cache never fails a message: any error in the cache path (Redis away, slow past
``TIMEOUT_S``, a script error) counts ``agentscale_step_cache_errors_total{op}`` and the step is computed
(or its output not stored)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from typing import Any

import redis.asyncio as aioredis

from . import metrics, streams

log = logging.getLogger(__name__)

TIMEOUT_S = 1.0  # a cache operation slower than this is abandoned: computing the step is the fallback
FORMAT = b"agentscale-step-cache-v1"

# KEYS[1] entry, KEYS[2] lru set; ARGV[1] entry name in the set. Returns the output or false.
GET = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
return v
"""

# KEYS[1] entry, KEYS[2] lru set; ARGV: name, output, ttl ms, max entries, entry key prefix.
# Returns how many live entries were evicted.
PUT = """
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local t = redis.call('TIME')
redis.call('ZADD', KEYS[2], tonumber(t[1]) * 1000000 + tonumber(t[2]), ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
local evicted = 0
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #gone, 2 do
    evicted = evicted + redis.call('DEL', ARGV[5] .. gone[i])
  end
end
return evicted
"""


def canonical_json(payload: Any) -> bytes:
    """One byte string per JSON value, whatever the key order or spacing it arrived with."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def cache_key(version: str, step: str, model: str, source: str, payload: Any) -> str:
    """The SHA-256 (hex) of the length-framed key fields (see the module docstring)."""
    h = hashlib.sha256()
    for part in (
        FORMAT,
        version.encode(),
        step.encode(),
        model.encode(),
        source.encode(),
        canonical_json(payload),
    ):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.hexdigest()


def entries_prefix(prefix: str, step: str) -> str:
    return f"{prefix}cache:{step}:e:"


def lru_key(prefix: str, step: str) -> str:
    return f"{prefix}cache:{step}:lru"


class StepCache:
    """The result cache of one step worker (``None`` in the runtime when the step has none)."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        step: str,
        model: str,
        labels: metrics.StepLabels,
        ttl_s: int,
        max_entries: int,
        max_entry_bytes: int,
        version: str = "",
    ) -> None:
        if ttl_s < 1 or max_entries < 1:
            raise ValueError(f"result cache: ttl_s ({ttl_s}) and max_entries ({max_entries}) must be >= 1")
        self.step, self.model, self.version = step, model, version
        self.ttl_ms = ttl_s * 1000
        self.max_entries = max_entries
        self.max_entry_bytes = max_entry_bytes
        self.labels = labels
        self.entries = entries_prefix(prefix, step)
        self.lru = lru_key(prefix, step)
        self._get = redis.register_script(GET)
        self._put = redis.register_script(PUT)

    def key(self, payload: Any, source: str = "") -> str:
        return cache_key(self.version, self.step, self.model, source, payload)

    async def get(self, key: str) -> str | None:
        """The cached output JSON for ``key``, or None on a miss or any failure (counted; never raises)."""
        try:
            value = await asyncio.wait_for(
                self._get(keys=[self.entries + key, self.lru], args=[key]), TIMEOUT_S
            )
        except Exception as e:  # any failure here means: compute the step
            self._failed("get", e)
            return None
        if value is None:
            metrics.STEP_CACHE_MISSES.labels(*self.labels).inc()
            return None
        metrics.STEP_CACHE_HITS.labels(*self.labels).inc()
        return str(value)

    async def put(self, key: str, output_json: str) -> None:
        """Store an output (unless larger than ``max_entry_bytes``) and evict past the bound; never raises."""
        if len(output_json.encode()) > self.max_entry_bytes:
            metrics.STEP_CACHE_SKIPPED.labels(*self.labels).inc()
            return
        args: list[str | int] = [key, output_json, self.ttl_ms, self.max_entries, self.entries]
        try:
            evicted = await asyncio.wait_for(
                self._put(keys=[self.entries + key, self.lru], args=args), TIMEOUT_S
            )
        except Exception as e:  # a result not stored is only a later miss
            self._failed("put", e)
            return
        if evicted:
            metrics.STEP_CACHE_EVICTIONS.labels(*self.labels).inc(int(evicted))

    def _failed(self, op: str, e: Exception) -> None:
        metrics.STEP_CACHE_ERRORS.labels(*self.labels, op).inc()
        if isinstance(e, TimeoutError):
            kind = f"slower than {TIMEOUT_S:g}s"
        else:
            kind = "redis unavailable" if isinstance(e, streams.REDIS_ERRORS) else type(e).__name__
        log.warning("step %s: result cache %s failed (%s: %s); computing the step", self.step, op, kind, e)
