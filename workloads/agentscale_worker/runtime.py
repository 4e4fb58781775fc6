"""The step runtime: consume the step's Redis Streams, run the handler, publish to the next steps.

At-least-once delivery with an idempotent, atomic publish (see ``streams.COMPLETE``), so every accepted run
yields exactly one result. A message is acknowledged only by the script that publishes its output (or moves
it to the dead-letter stream). Handler failures are retried in place with exponential backoff and jitter;
after ``max_deliveries`` attempts (counting earlier deliveries to consumers that died) the message goes to
the dead-letter stream with its error and the run fails. ``stop()`` (SIGTERM) stops reading and drains the
messages in flight.

:class:`StepWorker` owns the lifecycle and the handling of one message; its background jobs live in modules
of their own: ``consume`` (strict priority across the lanes), ``reclaim`` (XAUTOCLAIM from dead consumers),
``heartbeat`` (keep our own pending messages alive) and ``queue_stats`` (lag metrics), sharing the
:class:`~agentscale_worker.inflight.InFlight` book of messages held. With a result cache
(``AGENTSCALE_RESULT_CACHE_TTL_S``), a message whose input the step has answered before is published from
``step_cache`` without running the handler."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import traceback
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from redis.exceptions import ResponseError

from . import metrics, streams
from .aio import stop_tasks
from .backoff import backoff_s
from .batching import BatchWindow
from .config import Settings
from .consume import consume
from .handler import Handler, PermanentError, StepContext
from .heartbeat import heartbeat_loop
from .inflight import InFlight
from .lanes import LANES
from .publish import Publisher
from .queue_stats import queue_stats_loop
from .reclaim import reclaim_loop
from .step_cache import StepCache
from .triton import ModelClient, ModelUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")


class StepWorker:
    def __init__(self, settings: Settings, handler: Handler, model: ModelClient | None = None) -> None:
        if not settings.step:
            raise ValueError("a step worker needs a step (AGENTSCALE_STEP)")
        self.settings = settings
        self.handler = handler
        self.is_async = inspect.iscoroutinefunction(handler)
        self.prefix = streams.prefix(settings.namespace, settings.workflow)
        self.stream = streams.step_stream(self.prefix, settings.step)  # the normal lane
        self.streams = streams.step_streams(self.prefix, settings.step, LANES)  # consumed in this order
        self.labels = metrics.StepLabels(settings.namespace, settings.workflow, settings.step)
        self.model = model
        if self.model is None and settings.model and settings.triton_host:
            self.model = ModelClient(
                settings.model,
                settings.triton_host,
                settings.triton_grpc_port,
                BatchWindow(settings.batch_max_size, settings.batch_max_wait_ms / 1000),
                settings.load_balancing,
                self.labels,
                settings.dns_refresh_s,
                settings.request_timeout_s,
            )
        self.pool = ThreadPoolExecutor(max_workers=max(2, settings.concurrency), thread_name_prefix="cpu")
        self.redis = streams.redis_client(
            settings.redis_url, settings.redis_max_connections, settings.redis_pool_timeout_s
        )
        self.publisher = Publisher(self.redis, settings)
        self.cache: StepCache | None = None
        if settings.result_cache_ttl_s > 0:
            self.cache = StepCache(
                self.redis,
                self.prefix,
                settings.step,
                settings.model,
                self.labels,
                settings.result_cache_ttl_s,
                settings.result_cache_max_entries,
                settings.result_cache_max_entry_bytes,
                settings.result_cache_version,
            )
        self.inflight = InFlight(self.streams, settings.concurrency, self._handle, self.labels)
        self._abandoned = False
        self._stopping = asyncio.Event()
        self._bg: list[asyncio.Task[None]] = []
        self._metrics_runner: Any = None
        self.processed = 0

    # ---- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._ensure_groups()
        if self.model:
            await self.model.start()
        self._metrics_runner = await metrics.start_metrics_server(
            self.settings.metrics_port, ready=self.ready
        )
        r, s, me = self.redis, self.settings, self.settings.consumer
        stop = self._stopping
        self._bg = [
            asyncio.create_task(
                consume(r, me, self.inflight, stop, self._ensure_groups, self.labels), name="consume"
            ),
            asyncio.create_task(
                reclaim_loop(r, me, s.claim_idle_ms, s.claim_interval_s, self.inflight, stop, self.labels),
                name="reclaim",
            ),
            asyncio.create_task(queue_stats_loop(r, self.streams, self.labels, stop), name="queue-stats"),
            asyncio.create_task(
                heartbeat_loop(r, me, s.claim_idle_ms, self.inflight, stop), name="heartbeat"
            ),
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
        self.inflight.slot.set()
        await stop_tasks(self._bg)
        tasks = self.inflight.tasks
        if tasks:
            log.info("draining %d in-flight messages", len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=self.settings.drain_timeout_s)
            self._abandoned = True  # a retry loop that swallowed its cancellation gives up (see _redis_retry)
            for t in pending:  # left pending in Redis: another worker reclaims them
                t.cancel()
        if self.model:
            await self.model.close()
        if self._metrics_runner:
            await self._metrics_runner.cleanup()
        await self.redis.aclose()
        self.pool.shutdown(wait=False)

    async def ready(self) -> bool:
        """Readiness: Redis answers (a worker cut off from it takes no work; the probe says so)."""
        try:
            await self.redis.ping()
        except (*streams.REDIS_ERRORS, ResponseError) as e:
            if streams.pool_exhausted(e):
                return True
            log.warning("readiness: redis: %s", e)
            return False
        return True

    async def _ensure_groups(self) -> None:
        for stream in self.streams:
            await streams.ensure_group(self.redis, stream)

    # ---- one message --------------------------------------------------------------------------------

    async def _handle(self, stream: str, msg_id: str, fields: dict[str, str], deliveries_before: int) -> None:
        started = time.monotonic()
        run_id = fields.get("run", "")
        attempt = deliveries_before
        error = ""
        output: Any = None
        json_out = ""
        ok = False
        cache_key = ""  # set when the step has a result cache and the lookup missed: store the output
        unavailable_since = 0.0  # when the model became unavailable to this message (0: it is not)
        unavailable_tries = 0
        try:
            payload = json.loads(fields["data"])
        except (KeyError, json.JSONDecodeError) as e:
            payload, error, attempt = None, f"undecodable message: {e}", self.settings.max_deliveries
        if self.cache is not None and not error:
            key = self.cache.key(payload, fields.get("from", ""))
            cached = await self.cache.get(key)
            if cached is not None:
                json_out, ok = cached, True
            else:
                cache_key = key
        while not ok and not error and attempt < self.settings.max_deliveries:
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
        pub = self.publisher
        if ok:
            res = await self._redis_retry(lambda: pub.complete(msg_id, fields, run_id, json_out, stream))
            outcome = "ok" if res in (1, 3) else "duplicate"
            if res == 3:
                t0 = float(fields.get("t0") or 0)
                if t0:
                    e2e = metrics.E2E_LATENCY.labels(self.settings.namespace, self.settings.workflow)
                    e2e.observe(max(0.0, time.time() - t0))
            if cache_key and self.cache is not None:  # after publishing: the run does not wait for it
                await self.cache.put(cache_key, json_out)
        else:
            await self._redis_retry(lambda: pub.dead_letter(msg_id, fields, run_id, error, attempt, stream))
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
            except streams.REDIS_ERRORS as e:
                if self._abandoned:  # drained past its deadline: the message stays pending for a peer
                    raise asyncio.CancelledError from e
                attempt += 1
                metrics.ERRORS.labels(*self.labels, "redis").inc()
                log.warning("redis unavailable (%s); retry %d", e, attempt)
                await asyncio.sleep(backoff_s(attempt, 0.1, 2.0))
