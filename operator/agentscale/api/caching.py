"""Caching in the AgentWorkflow API: Triton's response cache per model server, and a result cache per step.

Two levels, each off unless the spec names it (docs/tuning.md, "Caching"):

- ``spec.models[].responseCache``: Triton's own response cache. The renderer writes ``response_cache {
  enable: true }`` into the model's ``config.pbtxt`` and ``--cache-config=local,size=<bytes>`` into its
  server's arguments (one model per server, so the size is that model's). A hit skips the model's execution;
  the key is Triton's hash of the whole request (every input tensor), so a micro-batched request hits only
  when the same batch repeats. Hits and misses are Triton's ``nv_cache_num_hits_per_model`` and
  ``nv_cache_num_misses_per_model``.
- ``spec.steps[].resultCache``: the step worker keeps each output in Redis under a SHA-256 of its input (and
  of ``version``, the step's model and the message's predecessor), so a repeated input skips the whole step
  (handler and model calls). Bounded by ``maxEntries`` (least recently used evicted) and ``maxEntryBytes``;
  each entry expires ``ttlSeconds`` after it was written. The handler must be deterministic in its input.

The renderer reads these in ``render/triton.py`` and ``render/workers.py``; the worker side is
``agentscale_worker.step_cache``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints, field_validator
from pydantic_core import PydanticCustomError

from agentscale.api.base import Advice, cel
from agentscale.api.base import Model as _Model

MIB = 1 << 20
GIB = 1 << 30
RESPONSE_CACHE_MIN_BYTES = MIB
RESPONSE_CACHE_MAX_BYTES = 64 * GIB
DEFAULT_RESPONSE_CACHE_SIZE = "256Mi"
MAX_TTL_SECONDS = 7 * 24 * 3600
MAX_ENTRIES = 10_000_000
MAX_ENTRY_BYTES = 64 * MIB

_SIZE_ADVICE = (
    "must be a whole number of bytes from 1Mi to 64Gi, e.g. 256Mi or 1Gi "
    "(Triton allocates the cache as one buffer of this size when the server starts)"
)
# The quantity rule of the field itself refuses what is not a quantity; this one bounds its value.
_SIZE_RULE = (
    "type(self.size) == int ? (self.size >= 1048576 && self.size <= 68719476736) : "
    "(isQuantity(self.size) && quantity(self.size).isInteger() && "
    "quantity(self.size).compareTo(quantity('1Mi')) >= 0 && "
    "quantity(self.size).compareTo(quantity('64Gi')) <= 0)"
)


def _size_bytes(value: object) -> int:
    """The byte count of a cache size (a Kubernetes quantity), or a refusal naming the bounds."""
    from agentscale.api.models import parse_quantity  # models imports this module

    q = parse_quantity(value)
    if (
        q is None
        or q != q.to_integral_value()
        or not RESPONSE_CACHE_MIN_BYTES <= q <= RESPONSE_CACHE_MAX_BYTES
    ):
        raise PydanticCustomError("cache_size", "{value}: " + _SIZE_ADVICE, {"value": repr(value)})
    return int(q)


class ResponseCache(_Model):
    """Triton's response cache for this model server: identical requests are answered from memory."""

    model_config = ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [cel(_SIZE_RULE, _SIZE_ADVICE, ".size")]}
    )

    enabled: bool = Field(
        True,
        description=(
            "Cache this model's responses (config.pbtxt response_cache). The model must be deterministic: "
            "a hit returns the first response to the same request."
        ),
    )
    size: str | int = Field(
        DEFAULT_RESPONSE_CACHE_SIZE,
        description=(
            "Bytes of the server's cache (--cache-config=local,size=<bytes>), as a Kubernetes quantity from "
            "1Mi to 64Gi, e.g. 256Mi. Allocated at start in the server's memory: at most half of "
            "resources.limits.memory."
        ),
        json_schema_extra={"x-kubernetes-int-or-string": True, "maxLength": 64},
    )

    @field_validator("size")
    @classmethod
    def _check_size(cls, value: str | int) -> str | int:
        _size_bytes(value)
        return value

    def size_bytes(self) -> int:
        """The cache size in bytes, as the server's ``--cache-config`` wants it."""
        return _size_bytes(self.size)


def response_cache_memory_problem(
    cache: ResponseCache | None, memory_limit: Decimal, limit_text: str
) -> str | None:
    """The cache buffer must leave room for the server and the model: at most half the memory limit."""
    if cache is None or not cache.enabled or cache.size_bytes() * 2 <= memory_limit:
        return None
    return (
        f"responseCache.size ({cache.size}) must be at most half of the server's memory limit "
        f"({limit_text}): lower the size or raise resources.limits.memory"
    )


CacheVersion = Annotated[
    str,
    StringConstraints(max_length=63),
    Advice(
        r"^[A-Za-z0-9._-]*$",
        "must be letters, digits, '.', '_' or '-' (at most 63), e.g. 2026-11-28 or v2",
    ),
]


class ResultCache(_Model):
    """A result cache for this step in the workflow's Redis: a repeated input skips the whole step."""

    enabled: bool = Field(
        True, description="Serve repeated inputs from the cache (false keeps the settings)."
    )
    ttlSeconds: int = Field(
        300,
        ge=1,
        le=MAX_TTL_SECONDS,
        description=(
            "Seconds an entry lives after it was written (hits do not extend it): the oldest result the step "
            "may serve. At least 1, at most 7 days."
        ),
    )
    maxEntries: int = Field(
        10_000,
        ge=1,
        le=MAX_ENTRIES,
        description=(
            "Entries kept for this step; past it the least recently used are evicted (counted in "
            "agentscale_step_cache_evictions_total). At least 1."
        ),
    )
    maxEntryBytes: int = Field(
        MIB,
        ge=1024,
        le=MAX_ENTRY_BYTES,
        description=(
            "Largest output stored (JSON bytes); larger ones are computed every time. maxEntries x "
            "maxEntryBytes bounds the cache's Redis memory."
        ),
    )
    version: CacheVersion = Field(
        "",
        description=(
            "Part of every key: change it to drop what is cached (after a handler change the renderer cannot "
            "see). Images, handler arguments and the step's model server are part of the key already."
        ),
    )
