"""The resource controller on real signals: a real API server, a real Prometheus, a real exporter process.

kwok pods never run, so a step's workers never serve ``/metrics`` here. A small exporter process stands in
for them: it runs the data plane's own collectors (``agentscale_worker.metrics``: the names and the
``namespace``/``workflow``/``step`` labels a step worker exports) for one queue-mode step and reports the
queue lag the test writes into a file. A real Prometheus (``agentscale_harness.prometheus``, as the signals
tests start it) scrapes it every second through the controller's own relabelling
(``promql.SCRAPE_RELABEL_CONFIGS``, with the pod metadata Kubernetes service discovery would give a worker
pod). The operator runs as a local process with ``AGENTSCALE_PROMETHEUS_URL`` pointing at it, a 2 s cycle
and a Lease of its own (so an operator started by other tests does not lead this one's cycles).

- lag rises: the controller scales the step's Deployment up in the API server, with the reason in
  ``status.lastScalingDecision`` and a ``Scaled`` Event;
- Prometheus stopped: ``MetricsUnavailable`` turns True with the error (and observedGeneration), a Warning
  Event says so, and the replicas do not move although the lag rises further;
- Prometheus started again (same port and data): the condition turns False, and decisions resume.

Run as a script (``python test_rc_signals.py exporter ...``) this file is the exporter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from agentscale.resource_controller.promql import SCRAPE_RELABEL_CONFIGS
from agentscale_harness.local import free_port
from agentscale_harness.prometheus import PrometheusServer, prometheus_binary
from conftest import OperatorProcess
from operator_support import condition, get_wf, wait_condition, workflow
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.cluster

STEP = "q"
WORKFLOW = "rcs"
CYCLE_S = 2
QUEUE = {"mode": "queue", "minReplicas": 1, "maxReplicas": 6, "targetQueueLagPerReplica": 10}
RC_MANAGER = "agentscale-resource-controller"


# -- the exporter (its own process) --------------------------------------------------------------------


def read_lag(lag_file: Path, last: float) -> float:
    """The lag the test asks for (``last`` while the file is being replaced)."""
    try:
        return float(lag_file.read_text().strip() or 0)
    except (OSError, ValueError):
        return last


async def export(port: int, namespace: str, workflow: str, step: str, lag_file: Path) -> None:
    """A step's worker metrics: the lag from ``lag_file`` (re-read every 0.2 s), nothing pending, and two
    messages a second finished in 50 ms each."""
    from agentscale_worker import metrics as W

    labels = W.StepLabels(namespace, workflow, step)
    runner = await W.start_metrics_server(port, host="127.0.0.1")
    assert runner is not None
    W.QUEUE_PENDING.labels(*labels).set(0)
    lag, tick = 0.0, 0
    while True:
        lag = read_lag(lag_file, lag)  # a few bytes from a local file: no need for a thread
        W.QUEUE_LAG.labels(*labels).set(lag)
        tick += 1
        if tick % 2 == 0:
            W.MESSAGES.labels(*labels, "ok").inc()
            W.STEP_LATENCY.labels(*labels).observe(0.05)
        await asyncio.sleep(0.2)


def exporter_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="test_rc_signals.py exporter")
    for flag in ("--port", "--namespace", "--workflow", "--step", "--lag-file"):
        p.add_argument(flag, required=True)
    a = p.parse_args(argv)
    asyncio.run(export(int(a.port), a.namespace, a.workflow, a.step, Path(a.lag_file)))


# -- the test ----------------------------------------------------------------------------------------------


class Exporter:
    """The exporter process and the file that sets its lag."""

    def __init__(self, workdir: Path, namespace: str) -> None:
        self.port = free_port()
        self.lag_file = workdir / "lag"
        self.set_lag(0)
        args = ["--port", str(self.port), "--namespace", namespace, "--workflow", WORKFLOW, "--step", STEP]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "exporter", *args, "--lag-file", str(self.lag_file)],
            stdout=(workdir / "exporter.log").open("wb"),
            stderr=subprocess.STDOUT,
        )

    def set_lag(self, lag: int) -> None:
        tmp = self.lag_file.with_suffix(".tmp")
        tmp.write_text(str(lag))
        tmp.replace(self.lag_file)

    def scrape_config(self, namespace: str) -> dict[str, Any]:
        """The controller's scrape job, with the metadata service discovery gives a worker pod of the step."""
        meta = {
            "__meta_kubernetes_namespace": namespace,
            "__meta_kubernetes_pod_name": f"{WORKFLOW}-{STEP}-0",
            "__meta_kubernetes_pod_label_app_kubernetes_io_part_of": "agentscale",
            "__meta_kubernetes_pod_label_agentscale_io_workflow": WORKFLOW,
            "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
            "__meta_kubernetes_pod_annotation_prometheus_io_port": str(self.port),
            "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        }
        return {
            "job_name": "agentscale-pods",
            "static_configs": [{"targets": [f"127.0.0.1:{self.port}"], "labels": meta}],
            "relabel_configs": SCRAPE_RELABEL_CONFIGS,
        }

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def query(prom: PrometheusServer, q: str) -> list[dict[str, Any]]:
    url = f"{prom.url}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    with urllib.request.urlopen(url, timeout=5) as r:
        result: list[dict[str, Any]] = json.loads(r.read())["data"]["result"]
        return result


@dataclass
class Loop:
    exporter: Exporter
    prom: PrometheusServer
    operator: OperatorProcess
    metrics_port: int

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample of the operator's own /metrics (None when absent)."""
        found = self.samples(name, **labels)
        return found[0] if found else None

    def samples(self, name: str, **labels: str) -> list[float]:
        """Every sample of ``name`` whose labels include ``labels``."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        return [
            float(s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]


@pytest.fixture
def loop(
    namespace: str, tmp_path: Path, kubeconfig: str, crd: None, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Loop]:
    prometheus_binary()  # fails here, clearly, without Debian's prometheus (scripts/bootstrap.sh installs it)
    exporter = Exporter(tmp_path, namespace)
    prom = PrometheusServer(tmp_path / "prometheus", [exporter.scrape_config(namespace)], 1.0)
    op = OperatorProcess(kubeconfig, tmp_path)
    port = free_port()
    try:
        prom.start()
        monkeypatch.setenv("AGENTSCALE_PROMETHEUS_URL", prom.url)
        monkeypatch.setenv("AGENTSCALE_RC_CYCLE_SECONDS", str(CYCLE_S))
        monkeypatch.setenv("AGENTSCALE_RC_NO_SERIES_GRACE_SECONDS", str(2 * CYCLE_S))
        monkeypatch.setenv("AGENTSCALE_RC_LEASE_NAME", f"rc-signals-{uuid.uuid4().hex[:8]}")
        monkeypatch.setenv("AGENTSCALE_METRICS_PORT", str(port))
        op.start()
        yield Loop(exporter, prom, op, port)
        assert op.alive(), f"the operator process died:\n{op.logs()[-4000:]}"
    finally:
        op.stop()
        prom.stop()
        exporter.stop()


def replicas(kubectl: Any, ns: str) -> tuple[int, int]:
    """The step Deployment's spec.replicas and metadata.generation."""
    d = kubectl.json("-n", ns, "get", "deployment", f"{WORKFLOW}-{STEP}")
    return int(d["spec"]["replicas"]), int(d["metadata"]["generation"])


def events(kubectl: Any, ns: str, reason: str) -> list[dict[str, Any]]:
    items = kubectl.json("-n", ns, "get", "events", "--field-selector", f"reason={reason}")["items"]
    return [e for e in items if e["involvedObject"]["name"] == WORKFLOW]


def metrics_unavailable(kubectl: Any, ns: str, status: str) -> dict[str, Any] | None:
    wf = get_wf(kubectl, ns, WORKFLOW)
    c = condition(wf, "MetricsUnavailable")
    if c.get("status") == status and c.get("observedGeneration") == wf["metadata"]["generation"]:
        return c
    return None


def test_lag_scales_up_prometheus_down_holds_and_says_so_then_decisions_resume(
    kubectl: Any, namespace: str, wait_for: Any, loop: Loop
) -> None:
    exporter, prom = loop.exporter, loop.prom
    ns = namespace
    kubectl.apply(workflow(WORKFLOW, [{"name": STEP, "scaling": QUEUE}]), namespace=ns)

    # The exporter's series reach Prometheus labelled with the workflow's namespace, name and step.
    series = wait_for(
        lambda: query(prom, "agentscale_queue_lag"), timeout=60, interval=1, message="lag scraped"
    )
    assert {k: series[0]["metric"][k] for k in ("namespace", "workflow", "step")} == {
        "namespace": ns,
        "workflow": WORKFLOW,
        "step": STEP,
    }
    wait_for(lambda: metrics_unavailable(kubectl, ns, "False"), timeout=90, interval=1,
             message="MetricsUnavailable False once the step's series are read")  # fmt: skip
    assert replicas(kubectl, ns)[0] == 1

    # Lag rises: 45 waiting at 10 per replica needs 5 (1 + 4, the most one cycle may add).
    exporter.set_lag(45)
    wait_for(lambda: replicas(kubectl, ns)[0] == 5, timeout=90, interval=1, message="rcs-q scaled to 5")
    dep = kubectl.json("-n", ns, "get", "deployment", f"{WORKFLOW}-{STEP}", "--show-managed-fields")
    assert any(
        m["manager"] == RC_MANAGER and m.get("subresource") == "scale"
        for m in dep["metadata"]["managedFields"]
    )

    def decision(to: int) -> dict[str, Any] | None:
        last = (get_wf(kubectl, ns, WORKFLOW).get("status") or {}).get("lastScalingDecision") or {}
        return last if last.get("toReplicas") == to else None

    last = wait_for(lambda: decision(5), timeout=30, interval=1, message="lastScalingDecision 1 -> 5")
    assert (last["target"], last["fromReplicas"]) == (f"step/{STEP}", 1), last
    # The lag rule ("queue lag 45 > 10/replica x 1 ...") or the arrival-rate rule, whose backlog drain also
    # reads the lag ("arrivals .../s ... + lag 45 ..."), whichever asks more that cycle: both name the lag.
    assert "lag 45" in last["reason"] and last["reason"].endswith("1 -> 5"), last["reason"]
    scaled = wait_for(lambda: events(kubectl, ns, "Scaled"), timeout=30, interval=1, message="Scaled Event")
    assert scaled[0]["message"] == f"step/{STEP}: {last['reason']}"

    # Prometheus goes away: MetricsUnavailable True with the error; nothing moves though the lag rises.
    prom.stop()
    cond = wait_for(lambda: metrics_unavailable(kubectl, ns, "True"), timeout=60, interval=1,
                    message="MetricsUnavailable True with Prometheus stopped")  # fmt: skip
    assert cond["reason"] == "Unreachable" and prom.url.split("//")[1] in cond["message"], cond
    assert "not scaling down" in cond["message"]
    warning = wait_for(lambda: events(kubectl, ns, "MetricsUnavailable"), timeout=30, interval=1,
                       message="a Warning Event for MetricsUnavailable")  # fmt: skip
    assert [(e["type"], "Unreachable" in e["message"]) for e in warning] == [("Warning", True)], warning
    wf = kubectl.json("-n", ns, "get", "agentworkflow", WORKFLOW, "--show-managed-fields")
    assert condition(wf, "Ready"), "the workflow controller's conditions are still there"
    owners = {m["manager"] for m in wf["metadata"]["managedFields"] if m.get("subresource") == "status"}
    assert RC_MANAGER in owners, owners
    # A spec change (maxReplicas 6 -> 7) makes the workflow controller rewrite its conditions for the new
    # generation; its merge patch replaces the list, so the resource controller writes its entry again:
    # observedGeneration follows, the transition time stays, and no second Warning is posted.
    since = cond["lastTransitionTime"]
    wider = {**QUEUE, "maxReplicas": 7}
    kubectl.apply(workflow(WORKFLOW, [{"name": STEP, "scaling": wider}]), namespace=ns)
    cond = wait_for(lambda: metrics_unavailable(kubectl, ns, "True"), timeout=60, interval=1,
                    message="MetricsUnavailable True for generation 2")  # fmt: skip
    assert cond["observedGeneration"] == 2 and cond["lastTransitionTime"] == since, cond
    wait_condition(kubectl, wait_for, ns, WORKFLOW, "Ready", "True")
    assert len(events(kubectl, ns, "MetricsUnavailable")) == len(warning)
    exporter.set_lag(60)
    before = replicas(kubectl, ns)
    time.sleep(4 * CYCLE_S + 2)  # four of the controller's cycles, and a margin
    assert replicas(kubectl, ns) == before == (5, before[1])
    assert metrics_unavailable(kubectl, ns, "True") is not None
    assert len(events(kubectl, ns, "Scaled")) == len(scaled)

    # Prometheus is back (same port, same data): the condition clears, and decisions resume: 60 needs 6.
    prom.start()
    cond = wait_for(lambda: metrics_unavailable(kubectl, ns, "False"), timeout=60, interval=1,
                    message="MetricsUnavailable False again")  # fmt: skip
    assert cond["reason"] == "MetricsAvailable", cond
    wait_for(lambda: replicas(kubectl, ns)[0] == 6, timeout=90, interval=1, message="rcs-q scaled to 6")
    last = wait_for(lambda: decision(6), timeout=30, interval=1, message="lastScalingDecision 5 -> 6")
    assert "lag 60" in last["reason"] and last["fromReplicas"] == 5, last  # either rule, as above

    # The controller's own metrics, served by the operator process.
    assert loop.metric("agentscale_rc_leader") == 1.0
    # the two scale-ups (1 -> 5, 5 -> 6): by the lag rule or the arrival-rate rule, as above
    ups = loop.samples("agentscale_rc_decisions_total", direction="up")
    assert sum(ups) >= 2, ups
    assert (loop.metric("agentscale_rc_decisions_total", direction="hold", rule="FailStatic") or 0) >= 1
    errors = loop.metric("agentscale_rc_query_errors_total", signal="step_queue_lag", kind="Unreachable")
    assert (errors or 0) >= 1
    age = loop.metric("agentscale_rc_seconds_since_last_successful_read")
    assert age is not None and age < 60
    cycles = loop.metric("agentscale_rc_cycle_duration_seconds_count") or 0
    assert cycles > 0
    took = loop.metric("agentscale_rc_cycle_duration_seconds_sum") or 0
    print(f"resource controller: {cycles:.0f} cycles, {1000 * took / cycles:.1f} ms each on average")


if __name__ == "__main__" and sys.argv[1:2] == ["exporter"]:
    exporter_main(sys.argv[2:])
