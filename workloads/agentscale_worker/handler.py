"""What a step handler is and what it sees: ``package.module:function`` taking a :class:`StepContext` and the
message's payload; :class:`PermanentError` for input that can never succeed."""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .triton import Arrays

if TYPE_CHECKING:
    from .runtime import StepWorker

T = TypeVar("T")
Handler = Callable[["StepContext", Any], Any]


class PermanentError(Exception):
    """Raised by a handler for input that can never succeed: dead-lettered without retries."""


def load_handler(spec: str) -> Handler:
    """``package.module:function`` -> the function."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"handler {spec!r} must look like 'package.module:function'")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    return fn  # type: ignore[no-any-return]


class StepContext:
    """What a handler sees: the run, the model (``await ctx.infer({...})``) and a CPU thread pool."""

    def __init__(self, worker: StepWorker, run_id: str, attempt: int, source: str) -> None:
        self.worker = worker
        self.run_id = run_id
        self.attempt = attempt
        self.source = source  # the predecessor step, "" for a source step, "*" for a join
        self.step = worker.settings.step
        self.workflow = worker.settings.workflow

    async def infer(self, inputs: Arrays) -> Arrays:
        if self.worker.model is None:
            raise RuntimeError(f"step {self.step!r} has no model (AGENTSCALE_MODEL is empty)")
        return await self.worker.model.infer(inputs)

    async def run_cpu(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.worker.pool, fn, *args)
