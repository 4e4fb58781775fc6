"""The resource controller's own metrics, served by the operator process on ``/metrics``.

One :class:`ControllerMetrics` per controller, each with its own registry (tests make as many as they like).
The names, read by the chart's scrape configuration and dashboards and listed in docs/tuning.md:

- ``agentscale_rc_cycle_duration_seconds`` (histogram): one cycle, the Prometheus read included.
- ``agentscale_rc_decisions_total{direction, rule}`` (counter): every decision for a queue- or slo-mode part,
  ``direction`` up, down or hold as carried out (a write that failed counts as hold), ``rule`` the
  ``Rule`` that set the number (``QueueLag``, ``FailStatic``, ``Bounds``, ...).
- ``agentscale_rc_query_errors_total{signal, kind}`` (counter): queries of one signal that got no values,
  ``kind`` an ``ErrorKind`` (``Unreachable``, ``HTTPError``, ``QueryError``, ``InvalidResponse``,
  ``NoSeries``).
- ``agentscale_rc_seconds_since_last_successful_read`` (gauge, computed when scraped): seconds since the
  last read Prometheus answered in full; before the first such read, since the first read was tried;
  NaN while no read has been tried (a follower, or no ``AGENTSCALE_PROMETHEUS_URL``).
- ``agentscale_rc_leader`` (gauge): 1 while this process holds the controller's Lease, else 0.
- ``agentscale_rc_rightsize_resizes_total{kind, resource}`` (counter): in-place pod resizes made by
  right-sizing, per part kind (step, model) and resource (cpu, memory) changed.
- ``agentscale_rc_rightsize_errors_total{kind, reason}`` (counter): resizes the API server refused or that
  failed (``reason`` the HTTP status, or ``Unreachable``), and rounds skipped because Prometheus did not
  answer (``kind`` ``all``, ``reason`` the ``ErrorKind``).

Served by :func:`serve` on ``AGENTSCALE_METRICS_PORT`` (default 9090, 0 turns it off): aiohttp on the
operator's event loop, ``/metrics`` only.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from agentscale.resource_controller.snapshot import Decision, Direction

log = logging.getLogger("agentscale.resource_controller.metrics")

PREFIX = "agentscale_rc"
DEFAULT_PORT = 9090
PORT_ENV = "AGENTSCALE_METRICS_PORT"
CYCLE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def port_from_env(env: Mapping[str, str] = os.environ) -> int:
    """``AGENTSCALE_METRICS_PORT``: 0 turns the endpoint off; anything but a port number is an error."""
    raw = env.get(PORT_ENV, "").strip()
    if not raw:
        return DEFAULT_PORT
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"{PORT_ENV}={raw!r}: set a port number (1-65535), or 0 to serve no metrics")
    return port


class ControllerMetrics:
    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._wall = wall
        self._last_success: float | None = None
        self._first_try: float | None = None
        self.cycle_duration = Histogram(
            f"{PREFIX}_cycle_duration_seconds",
            "Duration of one resource controller cycle, the Prometheus read included",
            buckets=CYCLE_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            f"{PREFIX}_decisions",
            "Decisions for queue- and slo-mode parts, by direction carried out and the rule that set them",
            ["direction", "rule"],
            registry=self.registry,
        )
        self.query_errors = Counter(
            f"{PREFIX}_query_errors",
            "Prometheus queries that gave a signal no values, by signal and error kind",
            ["signal", "kind"],
            registry=self.registry,
        )
        self.since_success = Gauge(
            f"{PREFIX}_seconds_since_last_successful_read",
            "Seconds since the last read Prometheus answered in full (NaN before any read was tried)",
            registry=self.registry,
        )
        self.since_success.set_function(self._age)
        self.leader = Gauge(
            f"{PREFIX}_leader",
            "1 while this process holds the resource controller's Lease",
            registry=self.registry,
        )

        self.rightsize_resizes = Counter(
            f"{PREFIX}_rightsize_resizes",
            "In-place pod resizes made by right-sizing, by part kind and resource changed",
            ["kind", "resource"],
            registry=self.registry,
        )
        self.rightsize_errors = Counter(
            f"{PREFIX}_rightsize_errors",
            "Right-sizing resizes that failed and rounds skipped for want of metrics",
            ["kind", "reason"],
            registry=self.registry,
        )

    def _age(self) -> float:
        since = self._last_success if self._last_success is not None else self._first_try
        return math.nan if since is None else max(0.0, self._wall() - since)

    def read(self, started: float, last_success: float | None, errors: Iterable[tuple[str, str]]) -> None:
        """One read: when it started and the last full success (wall clock), and (signal, kind) per error."""
        if self._first_try is None:
            self._first_try = started
        if last_success is not None:
            self._last_success = last_success
        for signal, kind in errors:
            self.query_errors.labels(signal, kind).inc()

    def decided(self, decisions: Iterable[Decision], not_done: Collection[str] = ()) -> None:
        """Count decisions; targets in ``not_done`` (a write that failed or was refused) count as hold."""
        for d in decisions:
            direction = Direction.hold if d.target in not_done else d.direction
            self.decisions.labels(direction.value, d.rule.value).inc()

    def text(self) -> bytes:
        return generate_latest(self.registry)


async def serve(metrics: ControllerMetrics, port: int, host: str = "0.0.0.0") -> web.AppRunner | None:
    """Serve ``/metrics`` on ``port``; None when the port is 0 or cannot be bound (logged: the operator
    keeps running without the endpoint rather than not at all)."""
    if port == 0:
        log.info("resource controller metrics off (%s=0)", PORT_ENV)
        return None

    async def handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.text(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        log.error("resource controller metrics not served: cannot listen on %s:%d (%s)", host, port, exc)
        await runner.cleanup()
        return None
    log.info("resource controller metrics on http://%s:%d/metrics", host, port)
    return runner
