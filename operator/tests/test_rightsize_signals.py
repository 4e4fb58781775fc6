"""Right-sizing's per-pod usage queries (resource_controller/rightsize_signals.py) against a real Prometheus.

Two scrape jobs, as a cluster has them: the workers' own metrics through the controller's relabelling
(``promql.SCRAPE_RELABEL_CONFIGS``: ``process_*`` series labelled with namespace, workflow and pod), and the
kubelet's cAdvisor series (namespace, pod, container in the series; ``honor_labels``). Counters grow at known
rates, so the CPU percentile is the configured rate; memory has a known peak."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from agentscale.resource_controller.promql import SCRAPE_RELABEL_CONFIGS
from agentscale.resource_controller.rightsize import MIB
from agentscale.resource_controller.rightsize_signals import (
    Container,
    Group,
    Measure,
    Source,
    Timing,
    queries,
    read_usage,
)
from agentscale.resource_controller.signals import PrometheusReader
from agentscale_harness.prometheus import PrometheusServer
from prom_fleet import require_prometheus

NS = "ns-r"
WINDOW = 30
GROUP = Group(WINDOW, 95)
SPIKE_SCRAPES = 3  # memory peaks for the first scrapes of each path, then settles


def test_one_query_per_source_and_measure_filtered_to_the_namespaces() -> None:
    qs = queries(GROUP, {"b", "a"})
    assert set(qs) == {(s, m) for s in Source for m in Measure}
    assert all('namespace=~"a|b"' in q for q in qs.values())
    assert qs[(Source.cadvisor, Measure.cpu)] == (
        "quantile_over_time(0.95, sum by (namespace, pod, container) (rate(container_cpu_usage_seconds_total"
        '{container!="", container!="POD", namespace=~"a|b"}[10s]))[30s:1s])'
    )
    assert "max_over_time(process_resident_memory_bytes" in qs[(Source.process, Measure.memory)]
    assert Timing.of(3600) == Timing(60, 60) and Timing.of(30) == Timing(10, 1)


class Exporter:
    """``/process/<pod>``: a worker's own series; ``/cadvisor``: the kubelet's, for every container."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.scrapes: dict[str, int] = {}
        self.lock = threading.Lock()

    @staticmethod
    def memory(base: float, spike: bool) -> float:
        return base + (100 * MIB if spike else 0)

    def text(self, path: str) -> str:
        t = time.monotonic() - self.started
        with self.lock:
            self.scrapes[path] = self.scrapes.get(path, 0) + 1
            spike = self.scrapes[path] <= SPIKE_SCRAPES
        if path == "/process/w-both":
            cpu, mem = 0.2, 200 * MIB
        elif path == "/process/w-only":
            cpu, mem = 0.05, 100 * MIB
        elif path == "/cadvisor":
            lines = []
            for pod, container, cpu, mem in (
                ("w-both", "worker", 0.3, 300 * MIB),
                ("t-0", "triton", 1.5, 2048 * MIB),
            ):
                lb = f'namespace="{NS}",pod="{pod}",container="{container}"'
                lines += [
                    f"container_cpu_usage_seconds_total{{{lb}}} {cpu * t!r}",
                    f"container_memory_working_set_bytes{{{lb}}} {self.memory(mem, spike)!r}",
                ]
            return "\n".join(lines) + "\n"
        else:
            return ""
        mem = self.memory(mem, spike)
        return f"process_cpu_seconds_total {cpu * t!r}\nprocess_resident_memory_bytes {mem!r}\n"

    @contextmanager
    def serving(self) -> Iterator[int]:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.text(self.path.removesuffix("/metrics")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                """Quiet."""

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            server.server_close()
            thread.join()


def scrape_configs(port: int) -> list[dict[str, Any]]:
    workers = []
    for pod in ("w-both", "w-only"):
        meta = {
            "__meta_kubernetes_pod_label_app_kubernetes_io_part_of": "agentscale",
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
            "__meta_kubernetes_pod_annotation_prometheus_io_port": str(port),
            "__meta_kubernetes_pod_annotation_prometheus_io_path": f"/process/{pod}/metrics",
            "__meta_kubernetes_namespace": NS,
            "__meta_kubernetes_pod_name": pod,
            "__meta_kubernetes_pod_label_agentscale_io_workflow": "shop",
        }
        workers.append({"targets": [f"127.0.0.1:{port}"], "labels": meta})
    return [
        {"job_name": "agentscale-pods", "static_configs": workers, "relabel_configs": SCRAPE_RELABEL_CONFIGS},
        {
            "job_name": "kubelet-cadvisor",
            "honor_labels": True,
            "metrics_path": "/cadvisor/metrics",
            "static_configs": [{"targets": [f"127.0.0.1:{port}"]}],
        },
    ]


async def test_real_prometheus_percentile_peak_coverage_and_the_source_order(tmp_path: Path) -> None:
    require_prometheus()
    exporter = Exporter()
    with exporter.serving() as port:
        prom = PrometheusServer(tmp_path / "prom", scrape_configs(port), 1.0).start()
        try:
            async with PrometheusReader(prom.url) as reader:
                deadline = time.monotonic() + 90
                while True:
                    got = await read_usage(reader, {GROUP: {NS}})
                    both = got.usage(GROUP, NS, "w-both", "worker")
                    if (both is not None and both.observed_s >= 20) or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(1)
                assert got.error is None
                raw = got.values[GROUP]
                assert Container(NS, "w-both", "worker") in raw[(Source.cadvisor, Measure.cpu)]
                assert Container(NS, "w-only", "") in raw[(Source.process, Measure.cpu)]
                # cAdvisor's series win where a container has them ...
                assert both is not None and both.source == "cadvisor"
                assert both.cpu == pytest.approx(0.3, rel=0.1)
                assert both.memory == 400 * MIB  # the spike at the start is the window's peak
                assert 15 <= both.observed_s <= WINDOW + 2
                # ... the process's own where it has none
                only = got.usage(GROUP, NS, "w-only", "worker")
                assert only is not None and only.source == "process"
                assert only.cpu == pytest.approx(0.05, rel=0.1)
                assert only.memory == 200 * MIB
                # a model server: cAdvisor only (Triton exports no per-process series)
                triton = got.usage(GROUP, NS, "t-0", "triton")
                assert triton is not None and triton.cpu == pytest.approx(1.5, rel=0.1)
                assert got.usage(GROUP, NS, "t-0", "other") is None
                assert got.usage(GROUP, "elsewhere", "w-both", "worker") is None

                prom.stop()
                down = await read_usage(reader, {GROUP: {NS}})  # fail static: an error, no values
                assert down.error is not None and not down.error.kind.answered and not down.values
        finally:
            prom.stop()
