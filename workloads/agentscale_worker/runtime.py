"""The step runtime: consume the step's Redis Stream, run the handler, publish to the next steps.

At-least-once delivery with an idempotent, atomic publish (see ``scripts.COMPLETE``), so every accepted run
yields exactly one result. A message is acknowledged only by the script that publishes its output (or moves
it to the dead-letter stream). Handler failures are retried in place with exponential backoff and jitter;
after ``max_deliveries`` attempts (counting earlier deliveries to consumers that died) the message goes to
the dead-letter stream with its error and the run fails. Messages left pending by a dead consumer are taken
over with XAUTOCLAIM. ``stop()`` (SIGTERM) stops reading and drains the messages in flight."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import keys, metrics, scripts
from .aio import stop_tasks
from .config import Settings
from .policies import LANES, BatchPolicy, backoff_s, lane_of
from .triton import Arrays, ModelClient, ModelUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[["StepContext", Any], Any]
REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


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


def redis_client(url: str) -> aioredis.Redis:
    """A pooled client that retries a command on a fresh connection after a connection error.

    ``from_url`` leaves the pool without retries, so after a Redis restart every pooled connection failed
    once (20 of 20 concurrent commands in a probe; the gateway answered 503 to each). Retrying is safe
    for our writes: the Lua scripts are idempotent (run id / done markers)."""
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=10,
        retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), 3),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )


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


class StepWorker:
    def __init__(self, settings: Settings, handler: Handler, model: ModelClient | None = None) -> None:
        if not settings.step:
            raise ValueError("a step worker needs a step (AGENTSCALE_STEP)")
        self.settings = settings
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        g = settings.graph
        self.prefix = keys.prefix(settings.namespace, settings.workflow)
        self.stream = keys.step_stream(self.prefix, settings.step)  # the normal lane
        self.streams = keys.step_streams(self.prefix, settings.step, LANES)  # consumed in this order
        self.next = g.next_of(settings.step)
        self.npreds = [len(g.predecessors(n)) for n in self.next]
        self.nsinks = len(g.sinks)
        self.labels = (settings.workflow, settings.step)
        self.model = model
        if self.model is None and settings.model and settings.triton_host:
            self.model = ModelClient(
                settings.model,
                settings.triton_host,
                settings.triton_grpc_port,
                BatchPolicy(settings.batch_max_size, settings.batch_max_wait_ms / 1000),
                settings.load_balancing,
                self.labels,
                settings.dns_refresh_s,
                settings.request_timeout_s,
            )
        self.pool = ThreadPoolExecutor(max_workers=max(2, settings.concurrency), thread_name_prefix="cpu")
        self.redis = redis_client(settings.redis_url)
        self._complete = self.redis.register_script(scripts.COMPLETE)
        self._fail = self.redis.register_script(scripts.FAIL)
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight_ids: dict[str, set[str]] = {s: set() for s in self.streams}  # heartbeat
        self._held: list[tuple[str, str, dict[str, str]]] = []  # read beyond the free slots, not started
        self._abandoned = False
        self._slot = asyncio.Event()
        self._stopping = asyncio.Event()
        self._bg: list[asyncio.Task[None]] = []
        self._metrics_runner: Any = None
        self.processed = 0

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._ensure_group()
        if self.model:
            await self.model.start()
        self._metrics_runner = await metrics.start_metrics_server(self.settings.metrics_port)
        self._bg = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._reclaim_loop(), name="reclaim"),
            asyncio.create_task(self._queue_stats_loop(), name="queue-stats"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
        ]

    async def run(self) -> None:
        await self.start()
        await self._stopping.wait()
        await self.drain()

    def stop(self) -> None:
        """Stop taking new messages; ``run()`` then drains and returns."""
        self._stopping.set()

    async def drain(self) -> None:
        self._stopping.set()
        self._slot.set()
        await stop_tasks(self._bg)
        if self._tasks:
            log.info("draining %d in-flight messages", len(self._tasks))
            _, pending = await asyncio.wait(self._tasks, timeout=self.settings.drain_timeout_s)
            self._abandoned = True  # a retry loop that swallowed its cancellation gives up (see _redis_retry)
            for t in pending:  # left pending in Redis: another worker reclaims them
                t.cancel()
        if self.model:
            await self.model.close()
        if self._metrics_runner:
            await self._metrics_runner.cleanup()
        await self.redis.aclose()
        self.pool.shutdown(wait=False)

    async def _ensure_group(self) -> None:
        for stream in self.streams:
            await ensure_group(self.redis, stream)

    # ---- consuming ----------------------------------------------------------------------------------

    async def _consume(self) -> None:
        """Strict priority across the lanes: take what the higher lanes hold before looking lower.

        While there is work, each round reads the lanes in order without blocking. Once a round finds all
        of them empty, block on all lanes at once (one entry each) until something arrives; an entry read
        beyond the free slots waits in ``_held`` (it is ours in Redis and heartbeated) and starts first."""
        failures = 0
        scan = True
        while not self._stopping.is_set():
            free = self.settings.concurrency - len(self._tasks)
            if free <= 0:
                self._slot.clear()
                await self._slot.wait()
                scan = True
                continue
            if self._held:
                for stream, msg_id, fields in self._held[:free]:
                    self._spawn(stream, msg_id, fields, 0)
                del self._held[:free]
                continue
            try:
                got = 0
                if scan:
                    for stream in self.streams:
                        resp = await self.redis.xreadgroup(
                            keys.GROUP, self.settings.consumer, {stream: ">"}, count=free - got
                        )
                        got += self._take(resp, free - got)
                        if got >= free:
                            break
                if not got:
                    resp = await self.redis.xreadgroup(
                        keys.GROUP,
                        self.settings.consumer,
                        dict.fromkeys(self.streams, ">"),
                        count=1,
                        block=1000,
                    )
                    got = self._take(resp, free)
                scan = got > 0
                failures = 0
            except ResponseError as e:
                if "NOGROUP" in str(e):  # the stream was lost (Redis without persistence): recreate
                    await self._ensure_group()
                    continue
                raise
            except REDIS_ERRORS as e:
                failures += 1
                metrics.ERRORS.labels(*self.labels, "redis").inc()
                log.warning("reading %s failed (%s); retrying", self.stream, e)
                await asyncio.sleep(backoff_s(failures, 0.1, 2.0))
                continue

    def _take(self, resp: Any, free: int) -> int:
        """Start up to ``free`` of the entries an XREADGROUP returned, highest lane first; hold the rest."""
        entries = [(stream, i, f) for stream, batch in (resp or []) for i, f in batch]
        entries.sort(key=lambda e: self.streams.index(e[0]))
        for stream, msg_id, fields in entries[:free]:
            self._spawn(stream, msg_id, fields, 0)
        self._held.extend(entries[free:])
        for stream, msg_id, _ in entries[free:]:
            self._inflight_ids[stream].add(msg_id)
        return len(entries)

    def _spawn(self, stream: str, msg_id: str, fields: dict[str, str], deliveries_before: int) -> None:
        task = asyncio.create_task(self._handle(stream, msg_id, fields, deliveries_before))
        self._tasks.add(task)
        self._inflight_ids[stream].add(msg_id)
        metrics.INFLIGHT.labels(*self.labels).set(len(self._tasks))

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            self._inflight_ids[stream].discard(msg_id)
            metrics.INFLIGHT.labels(*self.labels).set(len(self._tasks))
            self._slot.set()

        task.add_done_callback(done)

    async def _reclaim_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.reclaim_once()
            except REDIS_ERRORS as e:
                log.warning("reclaim failed: %s", e)
            except ResponseError as e:
                log.warning("reclaim failed: %s", e)
            await asyncio.sleep(self.settings.claim_interval_s)

    async def reclaim_once(self) -> int:
        """Take over messages idle longer than ``claim_idle_ms`` (their consumer died)."""
        total = 0
        for stream in self.streams:
            free = self.settings.concurrency - len(self._tasks)
            if free <= 0:
                break
            resp = await self.redis.xautoclaim(
                stream, keys.GROUP, self.settings.consumer, self.settings.claim_idle_ms, "0-0", count=free
            )
            claimed = [(i, f) for i, f in resp[1] if f]  # entries trimmed away come back empty
            for msg_id, fields in claimed:
                info = await self.redis.xpending_range(stream, keys.GROUP, msg_id, msg_id, 1)
                delivered = int(info[0]["times_delivered"]) if info else 1
                metrics.RECLAIMED.labels(*self.labels).inc()
                self._spawn(stream, msg_id, fields, max(0, delivered - 1))
            total += len(claimed)
        return total

    async def _heartbeat_loop(self) -> None:
        """Keep messages this consumer is still working on from looking dead to other consumers.

        ``XAUTOCLAIM`` takes any message idle longer than ``claim_idle_ms``; a slow handler, or one waiting
        for its model to come back, would otherwise be duplicated by a healthy peer. ``XCLAIM ... JUSTID``
        to ourselves resets the idle time without counting a delivery."""
        interval = max(0.05, self.settings.claim_idle_ms / 3000)
        while not self._stopping.is_set():
            await asyncio.sleep(interval)
            for stream, in_flight in self._inflight_ids.items():
                ids: list[Any] = list(in_flight)
                if not ids:
                    continue
                with contextlib.suppress(*REDIS_ERRORS, ResponseError):
                    await self.redis.xclaim(stream, keys.GROUP, self.settings.consumer, 0, ids, justid=True)

    async def _queue_stats_loop(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(*REDIS_ERRORS, ResponseError):
                lag = pending = 0
                for lane, stream in zip(LANES, self.streams, strict=True):
                    for g in await self.redis.xinfo_groups(stream):
                        if g["name"] == keys.GROUP:
                            lag += g.get("lag") or 0
                            pending += g.get("pending") or 0
                            metrics.QUEUE_LAG_LANE.labels(*self.labels, lane).set(g.get("lag") or 0)
                metrics.QUEUE_LAG.labels(*self.labels).set(lag)
                metrics.QUEUE_PENDING.labels(*self.labels).set(pending)
            await asyncio.sleep(2.0)

    # ---- one message --------------------------------------------------------------------------------

    async def _handle(self, stream: str, msg_id: str, fields: dict[str, str], deliveries_before: int) -> None:
        started = time.monotonic()
        run_id = fields.get("run", "")
        attempt = deliveries_before
        error = ""
        output: Any = None
        ok = False
        unavailable_since = 0.0  # when the model became unavailable to this message (0: it is not)
        unavailable_tries = 0
        try:
            payload = json.loads(fields["data"])
        except (KeyError, json.JSONDecodeError) as e:
            payload, error, attempt = None, f"undecodable message: {e}", self.settings.max_deliveries
        while not error and attempt < self.settings.max_deliveries:
            attempt += 1
            try:
                output = await self._call(StepContext(self, run_id, attempt, fields.get("from", "")), payload)
                json_out = json.dumps(output, separators=(",", ":"))
                ok = True
                break
            except asyncio.CancelledError:
                raise
            except ModelUnavailable as e:
                # not the message's fault: retry without spending a delivery, within a time budget
                now = time.monotonic()
                unavailable_since = unavailable_since or now
                if now - unavailable_since < self.settings.model_unavailable_budget_s:
                    metrics.ERRORS.labels(*self.labels, "model_unavailable").inc()
                    if unavailable_tries == 0:
                        log.warning("run %s step %s waits for its model: %s", run_id, self.settings.step, e)
                    unavailable_tries += 1
                    attempt -= 1
                    await asyncio.sleep(backoff_s(unavailable_tries, self.settings.retry_base_s, 2.0))
                    continue
                error = f"model unavailable for {now - unavailable_since:.0f}s, past the budget: {e}"
                log.warning("run %s step %s: %s", run_id, self.settings.step, error)
                break
            except Exception as e:
                metrics.ERRORS.labels(*self.labels, type(e).__name__).inc()
                error = f"{type(e).__name__}: {e}"
                log.warning(
                    "run %s step %s attempt %d failed: %s", run_id, self.settings.step, attempt, error
                )
                if isinstance(e, PermanentError) or attempt >= self.settings.max_deliveries:
                    error += "\n" + "".join(traceback.format_exception(e, limit=-3))
                    break
                metrics.RETRIES.labels(*self.labels).inc()
                await asyncio.sleep(backoff_s(attempt, self.settings.retry_base_s, self.settings.retry_max_s))
                error = ""
        if ok:
            res = await self._redis_retry(lambda: self._publish(msg_id, fields, run_id, json_out, stream))
            outcome = "ok" if res in (1, 3) else "duplicate"
            if res == 3:
                t0 = float(fields.get("t0") or 0)
                if t0:
                    metrics.E2E_LATENCY.labels(self.settings.workflow).observe(max(0.0, time.time() - t0))
        else:
            await self._redis_retry(lambda: self._dead_letter(msg_id, fields, run_id, error, attempt, stream))
            outcome = "dead_letter"
        self.processed += 1
        metrics.MESSAGES.labels(*self.labels, outcome).inc()
        metrics.STEP_LATENCY.labels(*self.labels).observe(time.monotonic() - started)

    async def _call(self, ctx: StepContext, payload: Any) -> Any:
        if self.is_async:
            return await self.handler(ctx, payload)
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.handler, ctx, payload)

    async def _redis_retry(self, op: Callable[[], Awaitable[T]]) -> T:
        """Redis being away is not the message's fault: retry until it is back (the message stays pending)."""
        attempt = 0
        while True:
            try:
                return await op()
            except REDIS_ERRORS as e:
                if self._abandoned:  # drained past its deadline: the message stays pending for a peer
                    raise asyncio.CancelledError from e
                attempt += 1
                metrics.ERRORS.labels(*self.labels, "redis").inc()
                log.warning("redis unavailable (%s); retry %d", e, attempt)
                await asyncio.sleep(backoff_s(attempt, 0.1, 2.0))

    def lane(self, fields: dict[str, str]) -> str:
        """A message's lane, from the priority it carries (the run's, set at the gateway)."""
        try:
            prio = int(fields.get("prio", ""))
        except ValueError:
            prio = self.settings.priority
        return lane_of(prio, self.settings.priority)

    async def _publish(
        self, msg_id: str, fields: dict[str, str], run_id: str, data: str, stream: str | None = None
    ) -> int:
        """Publish an output (to the next steps' streams of the run's lane) and ack it on ``stream``."""
        p, s = self.prefix, self.settings
        lane = self.lane(fields)
        ks = [
            stream or keys.step_stream(p, s.step, lane),
            keys.done(p, run_id, s.step),
            keys.run(p, run_id),
            keys.results(p),
            keys.inflight(p),
        ]
        for n in self.next:
            ks += [keys.step_stream(p, n, lane), keys.join(p, run_id, n)]
        args: list[Any] = [
            keys.GROUP,
            msg_id,
            run_id,
            s.step,
            data,
            fields.get("t0", "0"),
            fields.get("prio", str(s.priority)),
        ]
        args += [s.result_ttl_s, s.stream_maxlen, self.nsinks, f"{time.time():.6f}", *self.npreds]
        return int(await self._complete(keys=ks, args=args))

    async def _dead_letter(
        self, msg_id: str, fields: dict[str, str], run_id: str, error: str, attempts: int, stream: str = ""
    ) -> int:
        p, s = self.prefix, self.settings
        ks = [
            stream or keys.step_stream(p, s.step, self.lane(fields)),
            keys.dead_letter(p, s.step),
            keys.run(p, run_id),
            keys.results(p),
            keys.inflight(p),
        ]
        ks.append(keys.done(p, run_id, s.step))
        data = fields.get("data", "")[:100_000]
        args: list[str | int] = [keys.GROUP, msg_id, run_id, s.step, error[-4000:], data, attempts]
        args += [s.result_ttl_s, s.stream_maxlen, f"{time.time():.6f}"]
        log.error("run %s step %s dead-lettered after %d attempts: %s", run_id, s.step, attempts, error)
        return int(await self._fail(keys=ks, args=args))


async def ensure_group(r: aioredis.Redis, stream: str) -> None:
    try:
        await r.xgroup_create(stream, keys.GROUP, id="0", mkstream=True)
    except ResponseError as e:
        if "BUSYGROUP" not in str(e):
            raise
