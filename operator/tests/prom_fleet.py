"""A generated fleet of workers and Triton pods for the signals tests: known rates, lags and latency
distributions, exposed in Prometheus' text format by a threaded HTTP server (one path per pod), scraped by a
real Prometheus through the controller's own relabelling (``promql.SCRAPE_RELABEL_CONFIGS``).

Counters grow linearly from the fleet's start, so ``rate()`` over any window is the configured rate; gauges
are constant. The expected value of every signal is computed here from the same numbers."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agentscale.resource_controller.promql import SCRAPE_RELABEL_CONFIGS
from agentscale_harness.prometheus import PrometheusServer, prometheus_binary

EDGES = (0.01, 0.05, 0.1, 0.5, 1.0)  # histogram bucket bounds; +Inf after them


@dataclass(frozen=True)
class Latency:
    """A latency distribution: cumulative share of observations at each of ``EDGES``, and the mean."""

    cum: tuple[float, ...]
    mean_s: float

    def quantile(self, q: float) -> float:
        """What Prometheus' ``histogram_quantile`` answers for this distribution (linear in the bucket)."""
        lo, lo_c = 0.0, 0.0
        for edge, c in zip(EDGES, self.cum, strict=True):
            if c >= q:
                return lo + (edge - lo) * (q - lo_c) / (c - lo_c)
            lo, lo_c = edge, c
        raise ValueError("the quantile falls in the +Inf bucket")


def _labels(d: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in d.items())


def _histogram(name: str, labels: dict[str, str], lat: Latency, n: float) -> list[str]:
    """``n`` observations so far with distribution ``lat``."""
    lb = _labels(labels)
    out = [f'{name}_bucket{{{lb},le="{e}"}} {c * n!r}' for e, c in zip(EDGES, lat.cum, strict=True)]
    out += [f'{name}_bucket{{{lb},le="+Inf"}} {n!r}', f"{name}_sum{{{lb}}} {lat.mean_s * n!r}"]
    return [*out, f"{name}_count{{{lb}}} {n!r}"]


@dataclass(frozen=True)
class Worker:
    """One step worker pod: its own series carry namespace, workflow and step (as the real worker's do)."""

    namespace: str
    workflow: str
    step: str
    pod: str
    rate: float  # messages it finishes per second
    lag: float
    pending: float
    latency: Latency
    model: str = ""  # the model it calls: it also exports the client-side Triton latency histogram
    model_rate: float = 0.0
    model_latency: Latency | None = None
    pod_label_in_series: bool = False  # scale fleet: one target for all, so the pod goes in the series

    def lines(self, elapsed: float) -> list[str]:
        own = {"namespace": self.namespace, "workflow": self.workflow, "step": self.step}
        if self.pod_label_in_series:
            own["pod"] = self.pod
        lb, n = _labels(own), self.rate * elapsed
        out = [
            f'agentscale_messages_total{{{lb},outcome="ok"}} {n!r}',
            f"agentscale_queue_lag{{{lb}}} {self.lag!r}",
            f"agentscale_queue_pending{{{lb}}} {self.pending!r}",
            *_histogram("agentscale_step_latency_seconds", own, self.latency, n),
        ]
        if self.model and self.model_latency:
            m = {**own, "model": self.model}
            out += _histogram(
                "agentscale_triton_request_seconds", m, self.model_latency, self.model_rate * elapsed
            )
        return out


@dataclass(frozen=True)
class TritonPod:
    """One Triton pod of a model server. Its series carry only Triton's own ``model``/``version``; the pod
    labels (namespace, agentscale.io/workflow, agentscale.io/model) come through relabelling, unless
    ``labelled`` (scale fleet: one target for all, the series already labelled as relabelling would)."""

    namespace: str
    workflow: str
    model: str  # the spec's model server name (pod label agentscale.io/model)
    pod: str
    success: float  # requests per second
    samples_per_request: float
    requests_per_exec: float
    queue_us: float  # per request
    compute_us: float  # per request
    triton_model: str = "triton-name"
    labelled: bool = False

    @property
    def inferences(self) -> float:
        return self.success * self.samples_per_request

    @property
    def executions(self) -> float:
        return self.success / self.requests_per_exec

    def lines(self, elapsed: float) -> list[str]:
        own = {"model": self.triton_model, "version": "1"}
        if self.labelled:
            own = {
                "namespace": self.namespace,
                "workflow": self.workflow,
                "model": self.model,
                "pod": self.pod,
            }
        lb, e = _labels(own), elapsed
        return [
            f"nv_inference_request_success{{{lb}}} {self.success * e!r}",
            f"nv_inference_count{{{lb}}} {self.inferences * e!r}",
            f"nv_inference_exec_count{{{lb}}} {self.executions * e!r}",
            f"nv_inference_queue_duration_us{{{lb}}} {self.queue_us * self.success * e!r}",
            f"nv_inference_compute_infer_duration_us{{{lb}}} {self.compute_us * self.success * e!r}",
        ]


@dataclass(frozen=True)
class GatewayPod:
    """A workflow's gateway: it reports the lag of each of its steps (``lags``), also of a step at zero
    replicas that has no worker to report its own."""

    namespace: str
    workflow: str
    pod: str
    lags: tuple[tuple[str, float], ...]

    def lines(self, elapsed: float) -> list[str]:
        own = {"namespace": self.namespace, "workflow": self.workflow}
        return [
            f"agentscale_queue_lag{{{_labels({**own, 'step': step})}}} {lag!r}" for step, lag in self.lags
        ]


Pod = Worker | TritonPod | GatewayPod


@dataclass
class Exporter:
    """Serves ``/t/<i>/metrics`` for target ``i``, a list of pods each (generated at scrape time)."""

    targets: list[list[Pod]]
    started: float = field(default_factory=time.monotonic)
    scrapes: int = 0

    def text(self, i: int) -> str:
        elapsed = time.monotonic() - self.started
        return "\n".join(line for pod in self.targets[i] for line in pod.lines(elapsed)) + "\n"

    @contextmanager
    def serving(self) -> Iterator[int]:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) != 3 or parts[0] != "t" or not parts[1].isdigit() or parts[2] != "metrics":
                    self.send_error(404)
                    return
                body = exporter.text(int(parts[1])).encode()
                exporter.scrapes += 1
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                """No access log: Prometheus scrapes every second."""

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, name="exporter", daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()
            thread.join()

    def scrape_config(self, port: int) -> dict[str, Any]:
        """One static target per pod list, with the labels Kubernetes service discovery would give the pod
        (``__meta_kubernetes_*``), through the controller's relabelling."""
        configs = []
        for i, pods in enumerate(self.targets):
            meta = {
                "__meta_kubernetes_pod_label_app_kubernetes_io_part_of": "agentscale",
                "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
                "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port),
                "__meta_kubernetes_pod_annotation_prometheus_io_path": f"/t/{i}/metrics",
            }
            if len(pods) == 1:
                pod = pods[0]
                meta["__meta_kubernetes_namespace"] = pod.namespace
                meta["__meta_kubernetes_pod_name"] = pod.pod
                meta["__meta_kubernetes_pod_label_agentscale_io_workflow"] = pod.workflow
                if isinstance(pod, TritonPod):
                    meta["__meta_kubernetes_pod_label_agentscale_io_model"] = pod.model
            configs.append({"targets": [f"127.0.0.1:{port}"], "labels": meta})
        return {
            "job_name": "agentscale-pods",
            "static_configs": configs,
            "relabel_configs": SCRAPE_RELABEL_CONFIGS,
        }


class Counting:
    """An aiohttp session that records the HTTP requests it sends (a trace config, not a mock)."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        trace = aiohttp.TraceConfig()
        trace.on_request_start.append(self._start)
        self.session = aiohttp.ClientSession(trace_configs=[trace])

    async def _start(self, _: Any, __: Any, params: aiohttp.TraceRequestStartParams) -> None:
        self.requests.append(f"{params.method} {params.url.path}")

    async def __aenter__(self) -> Counting:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()


def require_prometheus() -> None:
    """Skip on a laptop without Prometheus; fail where the test command promised it (CI)."""
    try:
        prometheus_binary()
    except RuntimeError as e:
        if os.environ.get("AGENTSCALE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{e} (AGENTSCALE_REQUIRE_SERVICES=1: bootstrap.sh should have installed it)")
        pytest.skip(str(e))


@contextmanager
def scraped(
    exporter: Exporter, workdir: Path, interval_s: float, rules: dict[str, Any] | None = None
) -> Iterator[PrometheusServer]:
    """The exporter served and a real Prometheus scraping it every ``interval_s`` (and evaluating
    ``rules``, a rule file's content, as often)."""
    require_prometheus()
    with exporter.serving() as port:
        server = PrometheusServer(workdir, [exporter.scrape_config(port)], interval_s, rules=rules).start()
        try:
            yield server
        finally:
            server.stop()
