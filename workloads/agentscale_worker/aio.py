"""Shutting down background loops without trusting cancellation to arrive.

A ``task.cancel()`` can be swallowed by code a loop awaits: redis-py turns a cancellation that lands in the
middle of a reply into a ``ConnectionError`` on some paths, and Python 3.11's ``asyncio.wait_for`` drops a
cancellation that races with its own timeout. A loop that catches connection errors and retries then runs
forever and whoever awaits it hangs. So every background loop here also checks a closing flag, and
:func:`stop_tasks` waits for the loops with a bound instead of forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def stop_tasks(tasks: Iterable[asyncio.Task[None]], timeout_s: float = 5.0) -> None:
    """Cancel ``tasks`` and wait at most ``timeout_s`` for them; report (never raise) what they left."""
    tasks = list(tasks)
    for t in tasks:
        t.cancel()
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for t in pending:
        log.warning("background task %s did not stop within %.0fs; leaving it", t.get_name(), timeout_s)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            log.warning("background task %s had failed: %r", t.get_name(), t.exception())
