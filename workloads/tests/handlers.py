"""Handlers for fault tests (importable by worker subprocesses via PYTHONPATH=workloads)."""

from __future__ import annotations

import asyncio
from typing import Any

from agentscale_worker.examples import recommendation
from agentscale_worker.handler import PermanentError
from agentscale_worker.streams import redis_client

_gate_clients: dict[tuple[str, asyncio.AbstractEventLoop], Any] = {}  # the loop itself: ids get reused


async def _wait_gate(ctx: Any) -> None:
    """Hold the message until the Redis key ``gate`` exists (the worker waits; the test opens the gate)."""
    url = ctx.worker.settings.redis_url
    key = (url, asyncio.get_running_loop())
    if key not in _gate_clients:
        _gate_clients[key] = redis_client(url)
    while not await _gate_clients[key].exists("gate"):  # noqa: ASYNC110 - the gate is a key in another process
        await asyncio.sleep(0.01)


async def gated_encode(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """recommendation.encode, but first hold the message until the Redis key ``gate`` exists."""
    await _wait_gate(ctx)
    return await recommendation.encode(ctx, payload)


async def poison(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Echo, except inputs with ``fail`` always raise (``permanent`` raises a PermanentError)."""
    if payload.get("permanent"):
        raise PermanentError("cannot ever process this")
    if payload.get("fail"):
        raise ValueError(f"poison message {payload.get('n')}")
    return {"n": payload.get("n"), "attempt": ctx.attempt}


async def gated_echo(ctx: Any, payload: dict[str, Any]) -> dict[str, Any]:
    await _wait_gate(ctx)
    return {"echo": payload}
