"""The gateway: HTTP entry of a workflow (aiohttp).

  POST /v1/runs/sync   {"input": {...}, "priority"?: int, "timeout_ms"?: int, "run_id"?: str}
                       -> 200 {"run_id", "status": "done", "output": {sink: output}, "latency_ms"}
                          504 {"run_id", "status"} when the timeout passes (poll it), 500 when the run failed
  POST /v1/runs        same body -> 202 {"run_id", "status_url"}
  GET  /v1/runs/{id}   -> {"run_id", "status": queued|done|failed, "output"?, "error"?}; 404 when unknown
  GET  /healthz, /readyz (Redis reachable); /metrics on the metrics port

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
from collections.abc import Callable
from typing import Any

from aiohttp import web
from redis.exceptions import ResponseError

from . import metrics, streams
from .admission import RateMeter, admit, priority_share
from .aio import stop_tasks
from .config import Settings
from .lanes import LANES, lane_of
from .streams import REDIS_ERRORS, ensure_group, redis_client

log = logging.getLogger(__name__)
MAX_BODY = 4 * 1024 * 1024
Validator = Callable[[Any], str | None]  # input -> error message naming what is wrong, or None


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(
    body: bytes, validator: Validator | None, default_priority: int, max_timeout_ms: int
) -> dict[str, Any]:
    """Validate a run request body; raise BadRequest with a message naming the problem."""
    if len(body) > MAX_BODY:
        raise BadRequest(413, f"body is {len(body)} bytes; the limit is {MAX_BODY}")
    try:
        req = json.loads(body or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadRequest(400, f"body is not valid JSON: {e}") from e
    if not isinstance(req, dict):
        raise BadRequest(422, "body must be a JSON object with an 'input' field")
    unknown = sorted(set(req) - {"input", "priority", "timeout_ms", "run_id"})
    if unknown:
        raise BadRequest(422, f"unknown fields {unknown}; allowed: input, priority, timeout_ms, run_id")
    if "input" not in req:
        raise BadRequest(422, "field 'input' is required")
    prio = req.get("priority", default_priority)
    if not isinstance(prio, int) or isinstance(prio, bool) or not -1000 <= prio <= 1000:
        raise BadRequest(422, "field 'priority' must be an integer in [-1000, 1000]")
    timeout = req.get("timeout_ms", 30_000)
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or not 0 < timeout <= max_timeout_ms:
        raise BadRequest(422, f"field 'timeout_ms' must be a number in (0, {max_timeout_ms}]")
    run_id = req.get("run_id") or uuid.uuid4().hex
    if not isinstance(run_id, str) or not 0 < len(run_id) <= 64 or not run_id.replace("-", "").isalnum():
        raise BadRequest(422, "field 'run_id' must be 1-64 letters, digits or dashes")
    if validator is not None:
        problem = validator(req["input"])
        if problem:
            raise BadRequest(422, f"input: {problem}")
    return {"input": req["input"], "priority": prio, "timeout_ms": float(timeout), "run_id": run_id}


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
        self.redis = redis_client(settings.redis_url)
        self._submit = self.redis.register_script(streams.SUBMIT)
        self._waiters: dict[str, asyncio.Future[str]] = {}
        self._meter = RateMeter(window_s=2.0)
        self._backlog = 0
        self._bg: list[asyncio.Task[None]] = []
        self._closing = False
        self._runners: list[web.AppRunner] = []
        self.wf_labels = (settings.namespace, settings.workflow)  # the values of metrics.WORKFLOW_LABELS

    # ---- lifecycle ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY + 1024)
        app.router.add_post("/v1/runs/sync", self.run_sync)
        app.router.add_post("/v1/runs", self.submit)
        app.router.add_get("/v1/runs/{run_id}", self.get_run)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        return app

    async def start(self, host: str = "0.0.0.0", port: int | None = None) -> int:
        """Start background loops and the HTTP server; returns the bound port (``port=0``: any free)."""
        for step in self.settings.graph.steps:
            with contextlib.suppress(*REDIS_ERRORS):
                for stream in streams.step_streams(self.prefix, step, LANES):
                    await ensure_group(self.redis, stream)
        self._bg = [asyncio.create_task(self._results_loop()), asyncio.create_task(self._backlog_loop())]
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, self.settings.gateway_port if port is None else port, backlog=2048)
        await site.start()
        self._runners.append(runner)
        m = await metrics.start_metrics_server(self.settings.metrics_port)
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
                    fut = self._waiters.get(fields.get("run", ""))
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

    # ---- routes -------------------------------------------------------------------------------------

    def _error(self, route: str, code: int, message: str, **extra: Any) -> web.Response:
        metrics.GATEWAY_REQUESTS.labels(*self.wf_labels, route, str(code)).inc()
        headers = {"Retry-After": str(extra.pop("retry_after"))} if "retry_after" in extra else None
        return web.json_response({"error": message, **extra}, status=code, headers=headers)

    async def _accept(self, request: web.Request, route: str) -> dict[str, Any] | web.Response:
        body = await request.read()
        try:
            req = parse_request(
                body, self.validator, self.settings.priority, int(self.settings.request_timeout_s * 1000 * 10)
            )
        except BadRequest as e:
            return self._error(route, e.status, str(e))
        g = self.settings.graph
        decision = admit(
            backlog=self._backlog,
            throughput_rps=self._meter.rate(time.monotonic()),
            p95_budget_ms=g.p95_latency_ms,
            share=priority_share(req["priority"], self.settings.priority),
            min_backlog=self.min_backlog,
            fallback_rps=g.target_rps,
        )
        if not decision.admit:
            metrics.GATEWAY_SHED.labels(*self.wf_labels, str(req["priority"])).inc()
            return self._error(
                route,
                429,
                f"overloaded: estimated queueing {decision.estimated_ms:.0f} ms exceeds the "
                f"{g.p95_latency_ms} ms p95 objective",
                retry_after=decision.retry_after_s,
            )
        return req

    async def _enqueue(self, req: dict[str, Any]) -> bool:
        p = self.prefix
        data = json.dumps(req["input"], separators=(",", ":"))
        lane = lane_of(req["priority"], self.settings.priority)
        ks = [streams.run(p, req["run_id"]), streams.inflight(p), *self.sources[lane]]
        args = [req["run_id"], data, f"{time.time():.6f}", req["priority"], self.settings.result_ttl_s]
        args.append(self.settings.stream_maxlen)
        created = int(await self._submit(keys=ks, args=args))
        if created:
            self._backlog += 1
        return bool(created)

    async def run_sync(self, request: web.Request) -> web.Response:
        route = "sync"
        req = await self._accept(request, route)
        if isinstance(req, web.Response):
            return req
        started = time.monotonic()
        run_id = req["run_id"]
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiters[run_id] = fut
        try:
            try:
                created = await self._enqueue(req)
            except REDIS_ERRORS as e:
                return self._error(route, 503, f"queue unavailable: {e}", retry_after=1)
            if not created:
                return self._error(route, 409, f"run {run_id} already exists", run_id=run_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), req["timeout_ms"] / 1000)
            state = await self._state(run_id)  # the record is the truth, the notification a hint
        finally:
            self._waiters.pop(run_id, None)
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
        req = await self._accept(request, route)
        if isinstance(req, web.Response):
            return req
        try:
            created = await self._enqueue(req)
        except REDIS_ERRORS as e:
            return self._error(route, 503, f"queue unavailable: {e}", retry_after=1)
        if not created:
            return self._error(route, 409, f"run {req['run_id']} already exists", run_id=req["run_id"])
        metrics.GATEWAY_REQUESTS.labels(*self.wf_labels, route, "202").inc()
        return web.json_response(
            {"run_id": req["run_id"], "status": "queued", "status_url": f"/v1/runs/{req['run_id']}"},
            status=202,
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
        try:
            state = await self._state(run_id)
        except REDIS_ERRORS as e:
            return self._error("get", 503, f"queue unavailable: {e}", retry_after=1)
        if not state:
            return self._error("get", 404, f"run {run_id} not found (unknown or expired)")
        metrics.GATEWAY_REQUESTS.labels(*self.wf_labels, "get", "200").inc()
        return web.json_response(state)

    async def healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, _: web.Request) -> web.Response:
        try:
            await self.redis.ping()
        except (*REDIS_ERRORS, ResponseError) as e:
            return web.Response(status=503, text=f"redis: {e}")
        return web.Response(text="ok")
