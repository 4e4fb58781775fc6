"""How close the operator gets to the API server's own limit.

For each N (default 100, 500, 1000) three-step workflows:

* floor: ``kubectl apply --server-side`` of exactly the children the operator would create (rendered ahead
  by the same pure renderer, without owner references), then wait until every Deployment has its replica
  ready. That is what the API server, controller-manager, scheduler and kwok need anyway.
* operator: a fresh ``agentscale run`` process; ``kubectl apply --server-side`` of the N AgentWorkflows,
  then wait until every workflow reports Ready=True (which needs the same Deployments ready).

It reports the ratio operator/floor per N, the operator's peak RSS and CPU seconds, write requests per
workflow (from the API server's own ``apiserver_request_total``), and write requests in an idle minute.

Runs on its own local cluster (name ``agentscale-bench``), with extra fake CPU nodes so 3N pods fit:

    .venv/bin/python bench/operator/scale.py                 # 100 500 1000, writes docs/benchmarks.md
    .venv/bin/python bench/operator/scale.py --sizes 50 --no-report
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "operator"))

from agentscale import kinds  # noqa: E402
from agentscale.api.models import AgentWorkflow  # noqa: E402
from agentscale.api.validation import parse_spec  # noqa: E402
from agentscale.manifests import dump_all  # noqa: E402
from agentscale.render import render_workflow  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import DOC, IMG, machine, plot, report  # noqa: E402

RESULTS = REPO / "bench" / "operator" / "results"
WATCHED = {k.plural for k in kinds.WRITTEN}  # what the operator writes (idle writes count these)
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Cluster:
    def __init__(self, name: str) -> None:
        self.env = {
            **os.environ,
            "AGENTSCALE_CLUSTER_NAME": name,
            "KWOK_WORKDIR": str(REPO / ".cluster" / f"{name}-kwok"),
            "AGENTSCALE_KUBECONFIG": str(REPO / ".cluster" / f"{name}.kubeconfig"),
        }
        self.kubeconfig = self.env["AGENTSCALE_KUBECONFIG"]
        self.kubectl = subprocess.run(
            ["bash", "-c", ". e2e/cluster/versions.sh && agentscale_bin kubectl"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    def up(self) -> None:
        subprocess.run(["bash", "e2e/cluster/up.sh"], cwd=REPO, env=self.env, check=True)

    def down(self) -> None:
        subprocess.run(["bash", "e2e/cluster/down.sh"], cwd=REPO, env=self.env, check=False)

    def k(self, *args: str, input: str | None = None, timeout: float = 600) -> str:
        proc = subprocess.run(
            [self.kubectl, "--kubeconfig", self.kubeconfig, *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args[:4])}: {proc.stderr.strip()[:2000]}")
        return proc.stdout

    def writes(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for family in text_string_to_metric_families(self.k("get", "--raw", "/metrics")):
            if family.name != "apiserver_request":  # the parser drops the counter's _total suffix
                continue
            for s in family.samples:
                if s.name == "apiserver_request_total" and s.labels.get("verb") in WRITE_VERBS:
                    res = s.labels.get("resource", "")
                    out[res] = out.get(res, 0) + int(s.value)
        return out


def bench_nodes(count: int) -> list[dict[str, Any]]:
    """Extra CPU-only fake nodes, so thousands of worker pods have room."""
    nodes = []
    for i in range(count):
        cap = {"cpu": "256", "memory": "1Ti", "pods": "1000"}
        nodes.append(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": f"bench-cpu-{i}",
                    "labels": {"kubernetes.io/hostname": f"bench-cpu-{i}", "type": "kwok"},
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                },
                "status": {"capacity": cap, "allocatable": cap},
            }
        )
    return nodes


def workflow_doc(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "agentscale.io/v1alpha1",
        "kind": "AgentWorkflow",
        "metadata": {"name": f"wf-{i:05d}"},
        "spec": {
            "queue": {"redisUrl": "redis://redis.invalid:6379/0"},
            "gateway": {"enabled": False},
            "steps": [
                {"name": "plan", "next": ["act"]},
                {"name": "act", "next": ["reflect"]},
                {"name": "reflect"},
            ],
        },
    }


def rendered_children(doc: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    wf = AgentWorkflow(
        metadata={"name": doc["metadata"]["name"], "namespace": namespace}, spec=parse_spec(doc["spec"])
    )
    return render_workflow(wf, None)


def wait_watch(
    cluster: Cluster, resource: str, namespace: str, ready: Any, count: int, timeout: float
) -> float:
    """Stream ``kubectl get -w`` and return when ``count`` objects satisfy ``ready``; returns the time."""
    proc = subprocess.Popen(
        [
            cluster.kubectl,
            "--kubeconfig",
            cluster.kubeconfig,
            "-n",
            namespace,
            "get",
            resource,
            "-w",
            "-o",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    done: set[str] = set()
    decoder = json.JSONDecoder()
    buf = ""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"watch on {resource} ended early")
            buf += line
            if line.rstrip() != "}":
                continue
            try:
                obj, _ = decoder.raw_decode(buf)
            except ValueError:
                continue
            buf = ""
            items = obj.get("items", []) if obj.get("kind", "").endswith("List") else [obj]
            for item in items:
                name = (item.get("metadata") or {}).get("name")
                if not name or "spec" not in item:
                    continue  # a Status (e.g. an expired watch) or something else without a name
                if ready(item):
                    done.add(name)
                else:
                    done.discard(name)
            if len(done) >= count:
                return time.monotonic()
        raise TimeoutError(f"{len(done)}/{count} {resource} ready after {timeout}s")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def deployment_ready(obj: dict[str, Any]) -> bool:
    st = obj.get("status") or {}
    return bool(st.get("readyReplicas", 0) >= obj["spec"].get("replicas", 1) and st.get("observedGeneration"))


def workflow_ready(obj: dict[str, Any]) -> bool:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == "Ready":
            return bool(c["status"] == "True")
    return False


def delete_namespace(cluster: Cluster, ns: str) -> None:
    cluster.k("delete", "namespace", ns, "--ignore-not-found", "--wait=true", timeout=1200)


def proc_stats(pid: int) -> tuple[float, int]:
    """(cpu seconds, peak RSS bytes) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) * 1024
    return cpu, hwm


def start_operator(cluster: Cluster, logfile: Path) -> subprocess.Popen[bytes]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/healthz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentscale.cli", "run", "--standalone", "--liveness", url],
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
        stdout=logfile.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"operator exited: {logfile.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return proc
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("operator did not become live in 60s")


def run_size(cluster: Cluster, n: int, workdir: Path, idle_seconds: int) -> dict[str, Any]:
    docs = [workflow_doc(i) for i in range(n)]

    # --- floor
    ns = f"floor-{n}"
    cluster.k("create", "namespace", ns)
    children = [c for d in docs for c in rendered_children(d, ns)]
    deployments = sum(1 for c in children if c["kind"] == "Deployment")
    path = workdir / f"floor-{n}.yaml"
    path.write_text(dump_all(children))
    w0 = cluster.writes()
    log(f"N={n}: floor: kubectl apply --server-side of {len(children)} objects")
    t0 = time.monotonic()
    cluster.k("apply", "--server-side", "--field-manager=agentscale", "-f", str(path), timeout=3600)
    t_applied = time.monotonic() - t0
    t_ready = wait_watch(cluster, "deployments", ns, deployment_ready, deployments, timeout=3600) - t0
    w1 = cluster.writes()
    floor_writes = sum(w1.get(r, 0) - w0.get(r, 0) for r in WATCHED)
    log(f"N={n}: floor ready in {t_ready:.1f}s (apply {t_applied:.1f}s)")
    delete_namespace(cluster, ns)

    # --- operator
    ns = f"op-{n}"
    cluster.k("create", "namespace", ns)
    proc = start_operator(cluster, workdir / f"operator-{n}.log")
    try:
        cpu0, _ = proc_stats(proc.pid)
        wpath = workdir / f"workflows-{n}.yaml"
        wpath.write_text(dump_all(docs))
        w0 = cluster.writes()
        log(f"N={n}: operator: kubectl apply --server-side of {n} AgentWorkflows")
        t0 = time.monotonic()
        cluster.k("-n", ns, "apply", "--server-side", "-f", str(wpath), timeout=3600)
        t_op = wait_watch(cluster, "agentworkflows", ns, workflow_ready, n, timeout=3600) - t0
        w1 = cluster.writes()
        cpu1, hwm = proc_stats(proc.pid)
        op_writes = {r: w1.get(r, 0) - w0.get(r, 0) for r in WATCHED}
        log(f"N={n}: operator Ready in {t_op:.1f}s; peak RSS {hwm / 2**20:.0f} MiB; CPU {cpu1 - cpu0:.1f}s")
        # Let trailing status updates land, then measure an idle window.
        time.sleep(15)
        i0 = cluster.writes()
        time.sleep(idle_seconds)
        i1 = cluster.writes()
        idle = {r: i1.get(r, 0) - i0.get(r, 0) for r in WATCHED if i1.get(r, 0) != i0.get(r, 0)}
        _, hwm = proc_stats(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    delete_namespace(cluster, ns)
    return {
        "n": n,
        "objects": len(children),
        "floor_s": round(t_ready, 2),
        "floor_apply_s": round(t_applied, 2),
        "operator_s": round(t_op, 2),
        "ratio": round(t_op / t_ready, 3),
        "operator_peak_rss_mib": round(hwm / 2**20, 1),
        "operator_cpu_s": round(cpu1 - cpu0, 2),
        "floor_writes": floor_writes,
        "operator_writes": sum(op_writes.values()),
        "operator_writes_by_resource": {k: v for k, v in op_writes.items() if v},
        "idle_window_s": idle_seconds,
        "idle_writes": sum(idle.values()),
        "idle_writes_by_resource": idle,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 500, 1000])
    ap.add_argument("--cluster-name", default="agentscale-bench")
    ap.add_argument("--idle-seconds", type=int, default=60)
    ap.add_argument("--keep-cluster", action="store_true")
    ap.add_argument("--no-report", action="store_true", help="print only; do not touch docs/benchmarks.md")
    ap.add_argument("--results", type=Path, default=RESULTS / "scale.json", help="where to write the rows")
    args = ap.parse_args()

    cluster = Cluster(args.cluster_name)
    cluster.up()
    rows: list[dict[str, Any]] = []
    try:
        nodes = bench_nodes(max(2, (3 * max(args.sizes)) // 800 + 1))
        cluster.k("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}))
        for node in nodes:
            patch = json.dumps({"status": node["status"]})
            cluster.k(
                "patch", "node", node["metadata"]["name"], "--subresource=status", "--type=merge", "-p", patch
            )
        cluster.k("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        cluster.k("wait", "--for=condition=Established", "crd/agentworkflows.agentscale.io", "--timeout=60s")
        with tempfile.TemporaryDirectory() as tmp:
            for n in args.sizes:
                row = run_size(cluster, n, Path(tmp), args.idle_seconds)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if not args.keep_cluster:
            cluster.down()
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    print("\n N     floor(s)  operator(s)  ratio  peakRSS(MiB)  idle writes")
    for r in rows:
        print(
            f" {r['n']:<5} {r['floor_s']:>8} {r['operator_s']:>11} {r['ratio']:>6.2f} "
            f"{r['operator_peak_rss_mib']:>13} {r['idle_writes']:>12}"
        )
    if not args.no_report and rows:
        plot(rows)
        report(rows, machine())
        log(f"wrote {DOC.relative_to(REPO)} and {IMG.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
