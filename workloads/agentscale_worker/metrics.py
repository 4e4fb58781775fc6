"""Prometheus metrics of workers and gateway (names documented in docs/dataplane.md).

Module-level collectors in the default registry: several workers in one test process share them and are
told apart by their labels."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

QUEUE_LAG = Gauge(
    "agentscale_queue_lag", "Entries in the step stream not yet delivered to any worker", ["workflow", "step"]
)
QUEUE_LAG_LANE = Gauge(
    "agentscale_queue_lag_by_lane",
    "Entries not yet delivered, per priority lane (high, normal, low); agentscale_queue_lag is their sum",
    ["workflow", "step", "lane"],
)
QUEUE_PENDING = Gauge(
    "agentscale_queue_pending", "Entries delivered to workers and not yet acknowledged", ["workflow", "step"]
)
INFLIGHT = Gauge("agentscale_inflight", "Messages being processed by this worker", ["workflow", "step"])
BATCH_SIZE = Histogram(
    "agentscale_batch_size",
    "Samples per request sent to Triton",
    ["workflow", "step", "model"],
    buckets=BATCH_BUCKETS,
)
STEP_LATENCY = Histogram(
    "agentscale_step_latency_seconds",
    "Time from a message's read to its acknowledgement",
    ["workflow", "step"],
    buckets=LAT_BUCKETS,
)
E2E_LATENCY = Histogram(
    "agentscale_e2e_latency_seconds",
    "Time from gateway acceptance to the last sink's output",
    ["workflow"],
    buckets=LAT_BUCKETS,
)
TRITON_LATENCY = Histogram(
    "agentscale_triton_request_seconds",
    "Triton request latency per endpoint",
    ["workflow", "step", "model"],
    buckets=LAT_BUCKETS,
)
TRITON_OUTSTANDING = Gauge(
    "agentscale_triton_outstanding",
    "Requests in flight to a Triton endpoint",
    ["workflow", "step", "endpoint"],
)
ERRORS = Counter("agentscale_errors_total", "Errors by kind", ["workflow", "step", "kind"])
MESSAGES = Counter(
    "agentscale_messages_total",
    "Messages finished, by outcome (ok, duplicate, dead_letter)",
    ["workflow", "step", "outcome"],
)
RETRIES = Counter(
    "agentscale_retries_total", "Handler attempts that failed and were retried", ["workflow", "step"]
)
RECLAIMED = Counter(
    "agentscale_reclaimed_total", "Messages reclaimed from dead consumers", ["workflow", "step"]
)
GATEWAY_REQUESTS = Counter(
    "agentscale_gateway_requests_total",
    "Gateway requests by route and status code",
    ["workflow", "route", "code"],
)
GATEWAY_SHED = Counter("agentscale_gateway_shed_total", "Requests shed with 429", ["workflow", "priority"])
GATEWAY_LATENCY = Histogram(
    "agentscale_gateway_latency_seconds",
    "Synchronous run latency seen by the gateway",
    ["workflow"],
    buckets=LAT_BUCKETS,
)
GATEWAY_BACKLOG = Gauge("agentscale_gateway_backlog", "Runs accepted and not finished", ["workflow"])
GATEWAY_THROUGHPUT = Gauge("agentscale_gateway_throughput_rps", "Recent run completion rate", ["workflow"])


async def metrics_handler(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start_metrics_server(port: int, host: str = "0.0.0.0") -> web.AppRunner | None:
    """Serve /metrics and /healthz on ``port`` (0 or negative: don't serve)."""
    if port <= 0:
        return None
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/healthz", lambda _: _ok())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _ok() -> web.Response:
    return web.Response(text="ok")
