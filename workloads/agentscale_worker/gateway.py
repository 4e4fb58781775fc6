"""The gateway: HTTP entry of a workflow (aiohttp).

  POST /v1/runs/sync   {"input": {...}, "priority"?: int, "timeout_ms"?: int, "run_id"?: str}
                       -> 200 {"run_id", "status": "done", "output": {sink: output}, "latency_ms"}
                          504 {"run_id", "status"} when the timeout passes (poll it), 500 when the run failed
  POST /v1/runs        same body -> 202 {"run_id", "status_url"}
  GET  /v1/runs/{id}   -> {"run_id", "status": queued|done|failed, "output"?, "error"?}; 404 when unknown
  GET  /healthz, /readyz (Redis reachable), /openapi.json: unauthenticated; /metrics on the metrics port

Every other route takes ``Authorization: Bearer <token>`` when tokens are configured (``auth``). A request
body is bounded before it is read (size, and all bodies together), parsed and validated in worker threads
a few at a time (``run_request``), and admitted by the workflow's latency budget and then by the client's
fair share of it (``admission``, ``clients``). Client errors are 4xx naming the field; 503 only when Redis
is unreachable, and its body never names Redis' address.

Why aiohttp: it is already the project's base dependency (the operator uses it), it is an asyncio-native
server and client in one with no ASGI layer between the socket and the handler, and it holds tens of
thousands of waiting connections cheaply, which synchronous runs need. Completions reach the gateway over
the workflow's results stream (one XREAD loop per gateway, not one subscription per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from redis.exceptions import ResponseError

from . import metrics, queue_stats, streams
from .admission import RateMeter, admit, admit_client, capacity, fair_share, priority_share
from .aio import stop_tasks
from .auth import CLIENT, OPEN_PATHS, TokenStore, authenticate, token_store, unauthorized
from .bodies import BodyReader
from .clients import ClientBook
from .config import Settings
from .lanes import LANES, lane_of
from .openapi import openapi
from .run_request import RUN_ID_RULE, BadRequest, RunRequest, Validator, valid_run_id
from .streams import REDIS_ERRORS, ensure_group, pool_exhausted, redis_client

log = logging.getLogger(__name__)
TOKEN_RELOAD_S = 5.0
HOUSEKEEPING_S = 10.0
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gateway:
    def __init__(self, settings: Settings, validator: Validator | None = None, min_backlog: int = 8) -> None:
        self.settings = settings
        self.validator = validator
        self.min_backlog = min_backlog
        self.prefix = streams.prefix(settings.namespace, settings.workflow)
        self.sources = {
            lane: [streams.step_stream(self.prefix, s, lane) for s in settings.graph.sources]
            for lane in LANES
        }
        self.redis = redis_client(
            settings.redis_url, settings.redis_max_connections, settings.redis_pool_timeout_s
        )
        self._submit = self.redis.register_script(streams.SUBMIT)
        self.tokens: TokenStore | None = token_store(settings.gateway_tokens_dir)
        self.clients = ClientBook()
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._meter = RateMeter(window_s=2.0)
        self._backlog = 0
        self.bodies = BodyReader(settings, validator)
        self._bg: list[asyncio.Task[None]] = []
        self._closing = False
        self._runners: list[web.AppRunner] = []
        self.wf_labels = (settings.namespace, settings.workflow)  # the values of metrics.WORKFLOW_LABELS

    # ---- lifecycle ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        limit = self.settings.max_body_bytes + 1024  # aiohttp's own cap; ours answers first (413 JSON)
        app = web.Application(client_max_size=limit, middlewares=[self._guard])
        app.router.add_post("/v1/runs/sync", self.run_sync)
        app.router.add_post("/v1/runs", self.submit)
        app.router.add_get("/v1/runs/{run_id}", self.get_run)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/openapi.json", self.openapi)
        return app

    async def start(self, host: str = "0.0.0.0", port: int | None = None) -> int:
        """Start background loops and the HTTP server; returns the bound port (``port=0``: any free)."""
        for step in self.settings.graph.steps:
            with contextlib.suppress(*REDIS_ERRORS):
                for stream in streams.step_streams(self.prefix, step, LANES):
                    await ensure_group(self.redis, stream)
        self._bg = [
            asyncio.create_task(self._results_loop(), name="results"),
            asyncio.create_task(self._backlog_loop(), name="backlog"),
            asyncio.create_task(self._housekeeping_loop(), name="housekeeping"),
            asyncio.create_task(
                queue_stats.steps_lag_loop(
                    self.redis, self.prefix, self.settings.graph, self.wf_labels, lambda: self._closing
                ),
                name="steps-lag",
            ),
        ]
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, self.settings.gateway_port if port is None else port, backlog=2048)
        await site.start()
        self._runners.append(runner)
        m = await metrics.start_metrics_server(self.settings.metrics_port, ready=self.redis_ok)
        if m:
            self._runners.append(m)
        server: Any = site._server
        bound: int = server.sockets[0].getsockname()[1] if server and server.sockets else 0
        return bound

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._closing = True
        await stop_tasks(self._bg)
        await self.redis.aclose()
        self.bodies.close()

    # ---- background ---------------------------------------------------------------------------------

    async def _results_loop(self) -> None:
        """Follow the results stream; wake the waiting synchronous requests; measure throughput."""
        stream = streams.results(self.prefix)
        last = "0-0"
        failures = 0
        while not self._closing:
            try:
                if last == "0-0":
                    newest: Any = await self.redis.xrevrange(stream, count=1)
                    last = newest[0][0] if newest else "0-0"
                    if last == "0-0":
                        last = "0-1"  # start from the beginning of a new stream
                resp = await self.redis.xread({stream: last}, count=1000, block=1000)
                failures = 0
            except REDIS_ERRORS as e:
                failures += 1
                log.warning("results stream: %s", e)
                await asyncio.sleep(min(2.0, 0.1 * 2**failures))
                continue
            now = time.monotonic()
            by_stream: Any = resp or []
            for _, entries in by_stream:
                for msg_id, fields in entries:
                    last = msg_id
                    self._meter.add(now)
                    run_id = fields.get("run", "")
                    self.clients.release(run_id)
                    fut = self._waiters.get(run_id)
                    if fut and not fut.done():
                        fut.set_result(fields.get("status", "done"))

    async def _backlog_loop(self) -> None:
        key = streams.inflight(self.prefix)
        while not self._closing:
            with contextlib.suppress(*REDIS_ERRORS, ValueError):
                self._backlog = int(await self.redis.get(key) or 0)
                metrics.GATEWAY_BACKLOG.labels(*self.wf_labels).set(self._backlog)
                metrics.GATEWAY_THROUGHPUT.labels(*self.wf_labels).set(self._meter.rate(time.monotonic()))
            await asyncio.sleep(0.05)

    async def _housekeeping_loop(self) -> None:
        """Rotate tokens, forget runs never reported, trim the results stream, report Redis memory."""
        s = self.settings
        last_tokens = last_stats = time.monotonic()
        while not self._closing:
            await asyncio.sleep(0.25)  # short ticks: a cancellation redis-py swallowed still ends the loop
            now = time.monotonic()
            if self.tokens is not None and now - last_tokens >= TOKEN_RELOAD_S:
                last_tokens = now
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(self.tokens.reload)
            if now - last_stats >= HOUSEKEEPING_S:
                last_stats = now
                self.clients.prune(now, s.result_ttl_s)
                with contextlib.suppress(*REDIS_ERRORS, ResponseError):
                    await streams.trim_results(self.redis, self.prefix, s.results_retention_s)
                    await queue_stats.workflow_memory_once(self.redis, self.prefix, s.graph, self.wf_labels)

    # ---- middleware and errors ------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate (except the open paths) and turn anything unforeseen into a JSON 500 (logged)."""
        if request.path not in OPEN_PATHS:
            client = authenticate(self.tokens, request)
            if client is None:
                metrics.GATEWAY_REQUESTS.labels(*self.wf_labels, "auth", "401").inc()
                return unauthorized(request)
            CLIENT.set(client)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return web.json_response({"error": "internal error; see the gateway's log"}, status=500)

    def _error(self, route: str, code: int, message: str, **extra: Any) -> web.Response:
        metrics.GATEWAY_REQUESTS.labels(*self.wf_labels, route, str(code)).inc()
        headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
        return web.json_response({"error": message, **extra}, status=code, headers=headers)

    def _redis_error(self, route: str, e: BaseException) -> web.Response:
        """429 when this process ran out of pooled connections (busy), 503 when Redis is unreachable."""
        if pool_exhausted(e):
            return self._error(route, 429, "busy: no queue connection came free in time", retry_after=1)
        log.warning("redis unavailable on %s: %s", route, e)
        return self._error(route, 503, "queue unavailable; retry later", retry_after=1)

    # ---- accepting a run --------------------------------------------------------------------------------

    async def _accept(self, request: web.Request, route: str) -> tuple[RunRequest, str] | web.Response:
        """Parse and admit a run; on success the run id is booked for the client (release it if unused)."""
        try:
            req = await self.bodies.read(request)
        except BadRequest as e:
            return self._error(route, e.status, str(e), **({"retry_after": 1} if e.status == 429 else {}))
        g = self.settings.graph
        client = CLIENT.get()
        rate = self._meter.rate(time.monotonic())
        share = priority_share(req.priority, self.settings.priority)
        decision = admit(self._backlog, rate, g.p95_latency_ms, share, self.min_backlog, g.target_rps)
        cap = capacity(rate, g.p95_latency_ms, share, self.min_backlog, g.target_rps)
        fair = fair_share(cap, self.clients.active(client))
        over = self.clients.most_held_by_others(client) > fair
        held = self.clients.holds(client)
        decision = admit_client(decision, held, fair, over, self._backlog, cap, rate)
        if not decision.admit:
            metrics.GATEWAY_SHED.labels(*self.wf_labels, str(req.priority)).inc()
            why = (
                f"this client holds its fair share of the queue ({held} of {fair} runs)"
                if held >= fair
                else f"estimated queueing {decision.estimated_ms:.0f} ms exceeds the {g.p95_latency_ms} ms "
                "p95 objective"
            )
            return self._error(route, 429, f"overloaded: {why}", retry_after=decision.retry_after_s)
        run_id = req.run_id or uuid.uuid4().hex
        if not self.clients.add(client, run_id, time.monotonic()):
            return self._error(route, 409, f"run {run_id} already exists", run_id=run_id)
        return req, run_id

    async def _enqueue(self, req: RunRequest, run_id: str) -> bool:
        p = self.prefix
        lane = lane_of(req.priority, self.settings.priority)
        ks = [streams.run(p, run_id), streams.inflight(p), *self.sources[lane]]
        args: list[str | int] = [run_id, req.data, f"{time.time():.6f}", req.priority]
        args += [self.settings.result_ttl_s, self.settings.stream_maxlen]
        created = int(await self._submit(keys=ks, args=args))
        if created:
            self._backlog += 1
        return bool(created)

    # ---- routes -------------------------------------------------------------------------------------

    async def run_sync(self, request: web.Request) -> web.Response:
        route = "sync"
        accepted = await self._accept(request, route)
        if isinstance(accepted, web.Response):
            return accepted
        req, run_id = accepted
        started = time.monotonic()
        if run_id in self._waiters:  # another sync call of this gateway waits on this id: it keeps it
            self.clients.release(run_id)  # (its run finished, so this call's booking is the one held)
            return self._error(route, 409, f"run {run_id} already exists", run_id=run_id)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[run_id] = fut
        try:
            try:
                created = await self._enqueue(req, run_id)
            except REDIS_ERRORS as e:
                self.clients.release(run_id)
                return self._redis_error(route, e)
            if not created:
                self.clients.release(run_id)
                return self._error(route, 409, f"run {run_id} already exists", run_id=run_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), req.timeout_ms / 1000)
            try:
                state = await self._state(run_id)  # the record is the truth, the notification a hint
            except REDIS_ERRORS as e:
                return self._redis_error(route, e)
        finally:
            if self._waiters.get(run_id) is fut:
                del self._waiters[run_id]
        if state.get("status") == "done":
            metrics.GATEWAY_LATENCY.labels(*self.wf_labels).observe(time.monotonic() - started)
            metrics.GATEWAY_REQUESTS.labels(*self.wf_labels, route, "200").inc()
            state["latency_ms"] = round((time.monotonic() - started) * 1000, 3)
            return web.json_response(state)
        if state.get("status") == "failed":
            return self._error(route, 500, state.get("error", "failed"), run_id=run_id, status="failed")
        return self._error(
            route,
            504,
            "timed out waiting; poll the run",
            run_id=run_id,
            status=state.get("status", "queued"),
            status_url=f"/v1/runs/{run_id}",
        )

    async def submit(self, request: web.Request) -> web.Response:
        route = "submit"
        accepted = await self._accept(request, route)
        if isinstance(accepted, web.Response):
            return accepted
        req, run_id = accepted
        try:
            created = await self._enqueue(req, run_id)
        except REDIS_ERRORS as e:
            self.clients.release(run_id)
            return self._redis_error(route, e)
        if not created:
            self.clients.release(run_id)
            return self._error(route, 409, f"run {run_id} already exists", run_id=run_id)
        metrics.GATEWAY_REQUESTS.labels(*self.wf_labels, route, "202").inc()
        return web.json_response(
            {"run_id": run_id, "status": "queued", "status_url": f"/v1/runs/{run_id}"}, status=202
        )

    async def _state(self, run_id: str) -> dict[str, Any]:
        h = await self.redis.hmget(streams.run(self.prefix, run_id), ["status", "result", "error"])
        status, result, error = h
        if status is None:
            return {}
        out: dict[str, Any] = {"run_id": run_id, "status": status}
        if result is not None:
            out["output"] = json.loads(result)
        if error is not None:
            out["error"] = error
        return out

    async def get_run(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        if not valid_run_id(run_id):  # never echoed: it may be long or hostile
            return self._error("get", 400, f"a run id is {RUN_ID_RULE}")
        try:
            state = await self._state(run_id)
        except REDIS_ERRORS as e:
            return self._redis_error("get", e)
        if not state:
            return self._error("get", 404, f"run {run_id} not found (unknown or expired)")
        metrics.GATEWAY_REQUESTS.labels(*self.wf_labels, "get", "200").inc()
        return web.json_response(state)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def redis_ok(self) -> bool:
        try:
            await self.redis.ping()
        except (*REDIS_ERRORS, ResponseError) as e:
            if pool_exhausted(e):  # busy, not down: stay ready
                return True
            log.warning("readiness: redis: %s", e)
            return False
        return True

    async def readyz(self, _: web.Request) -> web.Response:
        if await self.redis_ok():
            return web.Response(text="ok")
        return web.Response(status=503, text="redis unreachable")

    async def openapi(self, _: web.Request) -> web.Response:
        return web.json_response(openapi(self.settings))
