"""Prometheus metrics of workers and gateway (names documented in docs/dataplane.md).

Module-level collectors in the default registry: several workers in one test process share them and are
told apart by their labels. Every series carries ``namespace`` and ``workflow`` (and ``step`` where a step
reports it): the resource controller groups one batched query for all workflows by exactly these labels
(``agentscale.resource_controller.promql``), so a series maps to its AgentWorkflow without pod relabelling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import NamedTuple

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

WORKFLOW_LABELS = ["namespace", "workflow"]
"""Labels of a workflow-wide series (gateway, end to end): the AgentWorkflow's namespace and name."""
STEP_LABELS = [*WORKFLOW_LABELS, "step"]
"""Labels of a step's series, in the order of :class:`StepLabels`."""


class StepLabels(NamedTuple):
    """The values of ``STEP_LABELS`` for one step worker: ``COLLECTOR.labels(*labels, ...)``."""

    namespace: str
    workflow: str
    step: str


QUEUE_LAG = Gauge(
    "agentscale_queue_lag", "Entries in the step stream not yet delivered to any worker", STEP_LABELS
)
QUEUE_LAG_LANE = Gauge(
    "agentscale_queue_lag_by_lane",
    "Entries not yet delivered, per priority lane (high, normal, low); agentscale_queue_lag is their sum",
    [*STEP_LABELS, "lane"],
)
QUEUE_PENDING = Gauge(
    "agentscale_queue_pending", "Entries delivered to workers and not yet acknowledged", STEP_LABELS
)
INFLIGHT = Gauge("agentscale_inflight", "Messages being processed by this worker", STEP_LABELS)
BATCH_SIZE = Histogram(
    "agentscale_batch_size",
    "Samples per request sent to Triton",
    [*STEP_LABELS, "model"],
    buckets=BATCH_BUCKETS,
)
STEP_LATENCY = Histogram(
    "agentscale_step_latency_seconds",
    "Time from a message's read to its acknowledgement",
    STEP_LABELS,
    buckets=LAT_BUCKETS,
)
E2E_LATENCY = Histogram(
    "agentscale_e2e_latency_seconds",
    "Time from gateway acceptance to the last sink's output",
    WORKFLOW_LABELS,
    buckets=LAT_BUCKETS,
)
TRITON_LATENCY = Histogram(
    "agentscale_triton_request_seconds",
    "Triton request latency per endpoint",
    [*STEP_LABELS, "model"],
    buckets=LAT_BUCKETS,
)
TRITON_OUTSTANDING = Gauge(
    "agentscale_triton_outstanding",
    "Requests in flight to a Triton endpoint",
    [*STEP_LABELS, "endpoint"],
)
ERRORS = Counter("agentscale_errors_total", "Errors by kind", [*STEP_LABELS, "kind"])
MESSAGES = Counter(
    "agentscale_messages_total",
    "Messages finished, by outcome (ok, duplicate, dead_letter)",
    [*STEP_LABELS, "outcome"],
)
RETRIES = Counter("agentscale_retries_total", "Handler attempts that failed and were retried", STEP_LABELS)
RECLAIMED = Counter("agentscale_reclaimed_total", "Messages reclaimed from dead consumers", STEP_LABELS)
STEP_CACHE_HITS = Counter(
    "agentscale_step_cache_hits_total",
    "Messages answered from the step's result cache (the step did not run)",
    STEP_LABELS,
)
STEP_CACHE_MISSES = Counter(
    "agentscale_step_cache_misses_total",
    "Result cache lookups that found nothing (the step ran)",
    STEP_LABELS,
)
STEP_CACHE_EVICTIONS = Counter(
    "agentscale_step_cache_evictions_total",
    "Result cache entries evicted to keep the step's maxEntries bound (least recently used first)",
    STEP_LABELS,
)
STEP_CACHE_SKIPPED = Counter(
    "agentscale_step_cache_skipped_total",
    "Outputs not stored in the result cache because they exceed maxEntryBytes",
    STEP_LABELS,
)
STEP_CACHE_ERRORS = Counter(
    "agentscale_step_cache_errors_total",
    "Result cache operations that failed (op get: the step ran; op put: the output was not stored)",
    [*STEP_LABELS, "op"],
)
GATEWAY_REQUESTS = Counter(
    "agentscale_gateway_requests_total",
    "Gateway requests by route and status code",
    [*WORKFLOW_LABELS, "route", "code"],
)
GATEWAY_SHED = Counter(
    "agentscale_gateway_shed_total", "Requests shed with 429", [*WORKFLOW_LABELS, "priority"]
)
GATEWAY_LATENCY = Histogram(
    "agentscale_gateway_latency_seconds",
    "Synchronous run latency seen by the gateway",
    WORKFLOW_LABELS,
    buckets=LAT_BUCKETS,
)
GATEWAY_BACKLOG = Gauge("agentscale_gateway_backlog", "Runs accepted and not finished", WORKFLOW_LABELS)
GATEWAY_THROUGHPUT = Gauge("agentscale_gateway_throughput_rps", "Recent run completion rate", WORKFLOW_LABELS)
REDIS_STREAM_LENGTH = Gauge(
    "agentscale_redis_stream_length",
    "Entries in one of the workflow's streams (step:<step>[:lane], dlq:<step>, results)",
    [*WORKFLOW_LABELS, "stream"],
)
REDIS_STREAM_BYTES = Gauge(
    "agentscale_redis_stream_bytes",
    "Memory of one of the workflow's streams (Redis MEMORY USAGE, sampled)",
    [*WORKFLOW_LABELS, "stream"],
)
REDIS_WORKFLOW_BYTES = Gauge(
    "agentscale_redis_workflow_bytes", "Memory of all the workflow's streams together", WORKFLOW_LABELS
)
REDIS_USED_MEMORY = Gauge(
    "agentscale_redis_used_memory_bytes",
    "used_memory of the Redis server the workflow uses (shared by every workflow on it)",
    WORKFLOW_LABELS,
)


async def metrics_handler(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start_metrics_server(
    port: int, host: str = "0.0.0.0", ready: Callable[[], Awaitable[bool]] | None = None
) -> web.AppRunner | None:
    """Serve /metrics, /healthz (the event loop answers) and, given ``ready``, /readyz (200 while it says
    True, else 503: a step worker's Redis connection) on ``port`` (0 or negative: don't serve)."""
    if port <= 0:
        return None
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", _ok)
    if ready is not None:
        check = ready

        async def readyz(_: web.Request) -> web.Response:
            return web.Response(text="ok") if await check() else web.Response(status=503, text="not ready")

        app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _ok(_: web.Request) -> web.Response:
    return web.Response(text="ok")
