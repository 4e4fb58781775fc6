from __future__ import annotations

import asyncio
import logging

import pytest
from agentscale_worker.aio import stop_tasks


async def test_stop_tasks_is_bounded_when_a_loop_swallows_its_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    closing = released = False

    async def stubborn() -> None:  # redis-py can turn a cancellation into an error
        while not released:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue

    async def polite() -> None:
        while not closing:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                continue  # swallowed as well, but the loop checks its closing flag

    async def broken() -> None:
        raise ValueError("boom")

    s, p, b = asyncio.create_task(stubborn()), asyncio.create_task(polite()), asyncio.create_task(broken())
    await asyncio.sleep(0.05)
    closing = True
    with caplog.at_level(logging.WARNING, logger="agentscale_worker.aio"):
        await stop_tasks([s, p, b], timeout_s=0.5)
    assert p.done() and b.done() and not s.done()
    assert "did not stop" in caplog.text and "boom" in caplog.text
    released = True
    await asyncio.wait_for(s, 1)
