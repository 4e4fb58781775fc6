"""Handlers for fault tests (importable by worker subprocesses via PYTHONPATH=workloads)."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from agentscale_worker.examples import recommendation
from agentscale_worker.runtime import PermanentError, redis_client

_gate_client: Any = None


async def gated_encode(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """recommendation.encode, but first hold the message until the Redis key ``gate`` exists."""
    global _gate_client
    if _gate_client is None:
        _gate_client = redis_client(os.environ["AGENTSCALE_REDIS_URL"])
    while not await _gate_client.exists("gate"):
        await asyncio.sleep(0.01)
    return await recommendation.encode(ctx, payload)


async def poison(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Echo, except inputs with ``fail`` always raise (``permanent`` raises a PermanentError)."""
    if payload.get("permanent"):
        raise PermanentError("cannot ever process this")
    if payload.get("fail"):
        raise ValueError(f"poison message {payload.get('n')}")
    return {"n": payload.get("n"), "attempt": ctx.attempt}
