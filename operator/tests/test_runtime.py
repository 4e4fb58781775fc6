"""The operator's work queue: level-triggered on generation, de-duplicated, retried with backoff."""

from __future__ import annotations

import asyncio
from typing import Any

from agentscale.runtime import Operator


class Store(dict):  # type: ignore[type-arg]
    """Stands in for a kopf index in this unit test: key -> list of values."""


class NullClient:
    async def close(self) -> None:
        return None


def operator_with(records: dict[tuple[str, str], dict[str, Any]]) -> Operator:
    op = Operator(NullClient(), reconcile_workers=0)  # type: ignore[arg-type]
    op.bind({"workflows_idx": Store({k: [v] for k, v in records.items()})})
    return op


def record(generation: int, deleting: bool = False) -> dict[str, Any]:
    return {"spec": {}, "generation": generation, "uid": "u", "deleting": deleting, "status": {}}


async def test_schedule_dedupes_and_skips_reconciled_generations() -> None:
    key = ("ns", "wf")
    op = operator_with({key: record(2)})
    op.schedule(key)
    op.schedule(key)
    assert op._queue.qsize() == 1
    await op._queue.get()
    op._queued.clear()
    op.done_generation[key] = 2
    op.schedule(key)
    assert op._queue.qsize() == 0  # status-only events cost nothing
    op.schedule(key, force=True)
    assert op._queue.qsize() == 1


async def test_deleting_or_unknown_workflows_are_not_scheduled() -> None:
    op = operator_with({("ns", "gone"): record(1, deleting=True)})
    op.schedule(("ns", "gone"))
    op.schedule(("ns", "never-seen"))
    assert op._queue.qsize() == 0


async def test_change_during_a_reconcile_runs_again() -> None:
    key = ("ns", "wf")
    op = operator_with({key: record(1)})
    calls: list[int] = []
    gate = asyncio.Event()

    async def fake_reconcile(k: Any, spec: Any, generation: int, uid: str) -> None:
        calls.append(generation)
        if len(calls) == 1:
            await gate.wait()

    op.reconcile = fake_reconcile  # type: ignore[method-assign]
    worker = asyncio.create_task(op._worker())
    op.schedule(key)
    for _ in range(100):
        if calls:
            break
        await asyncio.sleep(0.01)
    op.schedule(key, force=True)  # arrives while the first reconcile runs
    gate.set()
    for _ in range(100):
        if len(calls) == 2:
            break
        await asyncio.sleep(0.01)
    worker.cancel()
    assert calls == [1, 1]
    assert op.done_generation[key] == 1


async def test_failures_retry_with_backoff() -> None:
    key = ("ns", "wf")
    op = operator_with({key: record(1)})

    async def failing(*_: Any) -> None:
        raise RuntimeError("apiserver unavailable")

    op.reconcile = failing  # type: ignore[method-assign]
    worker = asyncio.create_task(op._worker())
    op.schedule(key)
    for _ in range(100):
        if op.failures.get(key):
            break
        await asyncio.sleep(0.01)
    worker.cancel()
    assert op.failures[key] == 1 and key not in op.done_generation
