"""The messages one step worker holds: running (at most ``capacity`` at a time), and read beyond the free
slots but not started yet (``held``: ours in Redis, started first when a slot frees). The ids of both, per
stream, are what the heartbeat keeps alive. Consuming and reclaiming put messages here; nothing here talks to
Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from . import metrics

Entry = tuple[str, str, dict[str, str]]  # stream, message id, fields
# handles one message: stream, id, fields, deliveries before this one (to consumers that died)
Start = Callable[[str, str, dict[str, str], int], Coroutine[Any, Any, None]]


class InFlight:
    def __init__(self, streams: list[str], capacity: int, start: Start, labels: metrics.StepLabels) -> None:
        self.streams = streams  # highest lane first
        self.capacity = capacity
        self._start = start
        self.labels = labels
        self.tasks: set[asyncio.Task[None]] = set()
        self.ids: dict[str, set[str]] = {s: set() for s in streams}
        self.held: list[Entry] = []
        self.slot = asyncio.Event()  # set when a running message finishes

    @property
    def free(self) -> int:
        return self.capacity - len(self.tasks)

    def spawn(self, stream: str, msg_id: str, fields: dict[str, str], deliveries_before: int) -> None:
        task = asyncio.create_task(self._start(stream, msg_id, fields, deliveries_before))
        self.tasks.add(task)
        self.ids[stream].add(msg_id)
        metrics.INFLIGHT.labels(*self.labels).set(len(self.tasks))

        def done(t: asyncio.Task[None]) -> None:
            self.tasks.discard(t)
            self.ids[stream].discard(msg_id)
            metrics.INFLIGHT.labels(*self.labels).set(len(self.tasks))
            self.slot.set()

        task.add_done_callback(done)

    def take(self, entries: list[Entry], free: int) -> int:
        """Start up to ``free`` of ``entries``, highest lane first; hold the rest. Returns how many came."""
        entries = sorted(entries, key=lambda e: self.streams.index(e[0]))
        for stream, msg_id, fields in entries[:free]:
            self.spawn(stream, msg_id, fields, 0)
        self.hold(entries[free:])
        return len(entries)

    def hold(self, entries: list[Entry]) -> None:
        self.held.extend(entries)
        for stream, msg_id, _ in entries:
            self.ids[stream].add(msg_id)

    def start_held(self) -> None:
        """Start held entries in the free slots, oldest first."""
        free = self.free
        for stream, msg_id, fields in self.held[:free]:
            self.spawn(stream, msg_id, fields, 0)
        del self.held[:free]
