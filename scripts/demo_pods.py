"""shop-recs' data plane as real pods on the demo cluster's real kubelet node (the host side of ``make
demo``'s default path; demo_local.py is the fallback without a real node).

- ``apply_shop_recs``: the gateway tokens Secret (auth is on by default), then the recommendation example with
  a spec override that suits this machine: ``spec.placement`` pins every pod to the real node, the model
  servers drop ``gpu`` (the node has none) and run the Triton image built here, and requests are small
  enough for two cores. The example file is not edited.
  Its three steps run in scaling mode ``slo`` (1 to ``SLO_MAX_REPLICAS`` replicas), so the resource
  controller sizes them to hold the workflow's p95 target from what Prometheus (demo_prometheus.py) scrapes.
- ``run_pods``: the load runs in a pod (demo_loadpod.py in the worker image, from a ConfigMap), since the
  host cannot reach pod addresses: a ramp with a spike (PROFILE ``ramp-spike``). This module follows its
  logs and prints each 5 s window with the replicas of every step and model server read from the cluster
  and, below it, each scaling decision the controller made meanwhile with its reason (its ``Scaled``
  Events on the workflow); then a summary and a plot of the run (``controller_plot``, a PNG in the run
  directory).
"""

from __future__ import annotations

import json
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from demo_common import KUBECTL, NS, ROOT, RPS, RUN, SECONDS, WORKFLOW, kjson, kubectl, ready_status, say

EXAMPLE = ROOT / "workloads" / "examples" / "recommendation.yaml"
LOADPOD = Path(__file__).with_name("demo_loadpod.py")
REAL_LABEL = "agentscale.io/real-node"
TOLERATION = {"key": REAL_LABEL, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
TRITON_IMAGE = "agentscale/triton:0.1.0"
WORKER_IMAGE = "agentscale/worker:0.1.0"
LOAD_POD = "demo-load"
TOKEN_KEY = "demo-load"
REPORT_EVERY_S = 5
PROFILE = "ramp-spike"
SLO_MAX_REPLICAS = 3  # per step: the whole data plane shares two cores here
PLOT = "demo-controller.png"
RESTRICTED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def apply(*docs: dict[str, Any]) -> None:
    text = "\n---\n".join(json.dumps(d) for d in docs)
    out = subprocess.run(
        [KUBECTL, "apply", "-n", NS, "-f", "-"], input=text, capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl apply: {out.stderr.strip()}")
    for line in out.stdout.splitlines():
        say(line)


def on_the_real_node() -> dict[str, Any]:
    doc = dict(yaml.safe_load(EXAMPLE.read_text()))
    spec = doc["spec"]
    spec["placement"] = {"nodeSelector": {REAL_LABEL: "true"}, "tolerations": [TOLERATION]}
    for model in spec["models"]:
        model.pop("gpu", None)
        model["image"] = TRITON_IMAGE
        model["resources"] = {"requests": {"cpu": "20m", "memory": "256Mi"}}
        # A model server's start imports torch (about a minute of one core here): on two cores more than two
        # would take more capacity while starting than they add.
        scaling = model.get("scaling") or {}
        if scaling.get("mode") in ("queue", "slo"):
            model["scaling"] = {**scaling, "maxReplicas": min(int(scaling.get("maxReplicas", 2)), 2)}
    for step in spec["steps"]:
        step["resources"] = {"requests": {"cpu": "20m", "memory": "128Mi"}}
        step["scaling"] = {"mode": "slo", "minReplicas": 1, "maxReplicas": SLO_MAX_REPLICAS}
    spec.setdefault("gateway", {})["resources"] = {"requests": {"cpu": "20m", "memory": "128Mi"}}
    return doc


def apply_shop_recs() -> None:
    """The tokens Secret first (the gateway pods mount it), kept across re-runs; then the workflow."""
    name = f"{WORKFLOW}-gateway-tokens"
    if not kubectl("get", "secret", name, "-n", NS, "--ignore-not-found", "-o", "name").strip():
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {TOKEN_KEY: secrets.token_hex(32)},
        }
        apply(secret)
    else:
        say(f"secret/{name} kept (from an earlier run)")
    apply(on_the_real_node())
    say(
        "shop-recs: placement on the real node, no gpu, image agentscale/triton:0.1.0, small requests (a spec"
    )
    say(f"override of {EXAMPLE.relative_to(ROOT)}; the file is unchanged); its steps in scaling mode slo")
    say(f"(1..{SLO_MAX_REPLICAS} replicas each), sized by the resource controller to hold p95 <= the SLO")


# --- the load pod ---------------------------------------------------------------------------------------


def triton_metrics_urls() -> list[str]:
    pods = kjson("get", "pods", "-n", NS, "-l", f"agentscale.io/workflow={WORKFLOW}")["items"]
    urls = []
    for p in pods:
        ip = (p.get("status") or {}).get("podIP")
        for c in p["spec"]["containers"]:
            for port in c.get("ports") or []:
                if port.get("name") == "metrics" and "agentscale.io/model" in p["metadata"]["labels"] and ip:
                    urls.append(f"http://{ip}:{port['containerPort']}/metrics")
    return urls


def load_pod() -> list[dict[str, Any]]:
    env = {
        "GATEWAY": f"http://{WORKFLOW}-gateway:8080",
        "RPS": f"{RPS:g}",
        "SECONDS": f"{SECONDS:g}",
        "REPORT_EVERY_S": str(REPORT_EVERY_S),
        "PROFILE": PROFILE,
        "TRITON_METRICS": ",".join(triton_metrics_urls()),
        "PYTHONUNBUFFERED": "1",
    }
    token = {"secretKeyRef": {"name": f"{WORKFLOW}-gateway-tokens", "key": TOKEN_KEY}}
    container = {
        "name": "load",
        "image": WORKER_IMAGE,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python", "/load/demo_loadpod.py"],
        "env": [{"name": k, "value": v} for k, v in env.items()]
        + [{"name": "GATEWAY_TOKEN", "valueFrom": token}],
        "securityContext": RESTRICTED,
        "resources": {"requests": {"cpu": "20m", "memory": "128Mi"}},
        "volumeMounts": [{"name": "load", "mountPath": "/load"}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": LOAD_POD},
            "data": {"demo_loadpod.py": LOADPOD.read_text()},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": LOAD_POD, "labels": {"app": LOAD_POD}},
            "spec": {
                "restartPolicy": "Never",
                "nodeSelector": {REAL_LABEL: "true"},
                "tolerations": [TOLERATION],
                "automountServiceAccountToken": False,
                "containers": [container],
                "volumes": [{"name": "load", "configMap": {"name": LOAD_POD}}],
            },
        },
    ]


def delete_load_pod(wait: bool) -> None:
    subprocess.run(
        [KUBECTL, "delete", "pod", LOAD_POD, "-n", NS, "--ignore-not-found", f"--wait={str(wait).lower()}"],
        capture_output=True,
        timeout=120,
        check=False,
    )


def wait_started(timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pod = kjson("get", "pod", LOAD_POD, "-n", NS)
        if pod["status"].get("phase") in ("Running", "Succeeded", "Failed"):
            return
        time.sleep(1)
    raise TimeoutError(
        f"the load pod did not start in {timeout:.0f}s:\n{kubectl('describe', 'pod', LOAD_POD, '-n', NS)}"
    )


# --- what the cluster shows -----------------------------------------------------------------------------


def replica_counts() -> dict[str, tuple[int, int]]:
    """(ready, desired) of every step and model server of the workflow (its Deployments)."""
    out: dict[str, tuple[int, int]] = {}
    for d in kjson("get", "deploy", "-n", NS, "-l", f"agentscale.io/workflow={WORKFLOW}")["items"]:
        labels = d["metadata"]["labels"]
        part = labels.get("agentscale.io/step") or labels.get("agentscale.io/model")
        if part:
            ready = (d.get("status") or {}).get("readyReplicas") or 0
            out[part] = (int(ready), int(d["spec"].get("replicas", 0)))
    return out


def replicas(counts: dict[str, tuple[int, int]] | None = None) -> str:
    counts = replica_counts() if counts is None else counts
    return " ".join(f"{part}={r}/{d}" for part, (r, d) in sorted(counts.items()))


class Decisions:
    """The resource controller's scaling decisions on the workflow, from its ``Scaled`` Events (one per
    change: ``step/<name>: <reason>``), each reported once."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.log: list[tuple[float, str]] = []  # (seconds into the load, message)

    def new(self, t: float) -> list[str]:
        try:
            items = kjson(
                "get", "events", "-n", NS, "--field-selector",
                f"involvedObject.name={WORKFLOW},involvedObject.kind=AgentWorkflow,reason=Scaled",
            )["items"]  # fmt: skip
        except RuntimeError as exc:
            return [f"(could not read the controller's Events: {exc})"]
        items.sort(key=lambda e: e.get("eventTime") or e.get("lastTimestamp") or "")
        out = []
        for e in items:
            uid = e["metadata"]["uid"]
            if uid not in self.seen:
                self.seen.add(uid)
                out.append(str(e.get("message") or e.get("note") or ""))
                self.log.append((t, out[-1]))
        return out


def metrics_unavailable() -> str:
    """The controller's MetricsUnavailable message while it is True, else ''."""
    for c in (kjson("get", "aw", WORKFLOW, "-n", NS).get("status") or {}).get("conditions") or []:
        if c.get("type") == "MetricsUnavailable" and c.get("status") == "True":
            return str(c.get("message") or "")
    return ""


def ready() -> str:
    status, reason = ready_status(kjson("get", "aw", WORKFLOW, "-n", NS))
    return "True" if status == "True" else f"{status}/{reason}"


def window_line(w: dict[str, Any], slo_ms: float, counts: dict[str, tuple[int, int]] | None = None) -> str:
    if not w["sent"]:  # the last window: the load has stopped, answers still in flight arrive
        return f"[{w['t']:5.1f}s] (load stopped) the last {w['ok']} answers, p95 {w['p95_ms']:.0f} ms"
    mark = "ok" if w["p95_ms"] <= slo_ms else "OVER"
    dt = max(w["seconds"], 1e-6)
    return (
        f"[{w['t']:5.1f}s] offered {w['sent'] / dt:6.1f}/s  achieved {w['ok'] / dt:6.1f}/s  "
        f"p50 {w['p50_ms']:5.0f} ms  p95 {w['p95_ms']:5.0f} ms ({mark} vs SLO {slo_ms:g})  "
        f"429s {w['shed']:3d}  errors {w['errors']:3d}  replicas {replicas(counts)}"
    )


def controller_plot(
    windows: list[dict[str, Any]], decisions: list[tuple[float, str]], slo_ms: float, path: Path
) -> Path:
    """The run as a PNG: offered and achieved load, p95 against the SLO, and each step's and model server's
    desired replicas, with a mark at each of the controller's decisions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live = [w for w in windows if w["sent"]]
    t = [w["t"] for w in live]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax1.plot(t, [w["sent"] / max(w["seconds"], 1e-6) for w in live], label="offered req/s")
    ax1.plot(t, [w["ok"] / max(w["seconds"], 1e-6) for w in live], label="answered req/s")
    ax1.plot(t, [w["shed"] / max(w["seconds"], 1e-6) for w in live], label="shed (429) req/s")
    ax1.set_ylabel("requests/s")
    ax1.legend(loc="upper left", fontsize=8)
    ax2.plot(t, [w["p95_ms"] for w in live], marker=".", label="p95 (5 s windows)")
    ax2.axhline(slo_ms, color="red", linestyle="--", label=f"SLO p95 {slo_ms:g} ms")
    ax2.set_ylabel("ms")
    ax2.set_yscale("log")
    ax2.legend(loc="upper left", fontsize=8)
    parts = sorted({p for w in live for p in w.get("replicas", {})})
    for i, part in enumerate(parts):  # offset a little so that parts at the same count stay visible
        lift = 0.06 * (i - (len(parts) - 1) / 2)
        counts = [w.get("replicas", {}).get(part, (0, 0))[1] + lift for w in live]
        ax3.step(t, counts, where="post", label=part, linestyle=("-", "--", ":", "-.")[i % 4])
    for at, _ in decisions:
        ax3.axvline(at, color="grey", alpha=0.3)
    ax3.set_ylabel("desired replicas")
    ax3.set_xlabel(f"seconds into the load ({PROFILE}); grey: a scaling decision")
    ax3.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"make demo: {WORKFLOW}, steps in mode slo, resource controller on")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def print_summary(s: dict[str, Any], slo_ms: float) -> None:
    say("")
    say(f"summary: {WORKFLOW} as pods on the real node, open loop ({PROFILE}, up to {RPS:g} req/s, a spike)")
    say(f"  requests {s['sent']}: ok {s['ok']}, shed (429) {s['shed']}, errors {s['errors']}")
    dt = max(s["seconds"], 1e-6)
    say(f"  achieved {s['ok'] / dt:.1f} req/s (offered {s['sent'] / dt:.1f})")
    say(
        f"  latency ms: p50 {s['p50_ms']}  p95 {s['p95_ms']}  p99 {s['p99_ms']}  max {s['max_ms']}  "
        f"(SLO p95 {slo_ms:g} ms)"
    )
    for model, per in sorted((s.get("triton") or {}).items()):
        if per.get("batches"):
            say(
                f"  triton {model}: {per['samples']:.0f} samples in {per['batches']:.0f} batches "
                f"(avg batch {per['samples'] / per['batches']:.1f})"
            )
    if s.get("errors_first"):
        say("  first errors: " + "; ".join(s["errors_first"]))
    say(f"  replicas at the end: {replicas()}")
    say(f"  workflow {WORKFLOW} Ready={ready()} in the cluster")


def run_pods() -> int:
    slo_ms = float(yaml.safe_load(EXAMPLE.read_text())["spec"]["slo"]["p95LatencyMs"])
    print(
        f"\n=== [{time.strftime('%H:%M:%S')}] load pod {LOAD_POD} -> http://{WORKFLOW}-gateway:8080",
        flush=True,
    )
    delete_load_pod(wait=True)  # an earlier run's
    apply(*load_pod())
    summary: dict[str, Any] | None = None
    windows: list[dict[str, Any]] = []
    decisions = Decisions()
    decisions.new(0.0)  # those of earlier runs (DEMO_KEEP) are not this run's
    decisions.log.clear()
    log = (RUN / "load-pod.log").open("w")
    follow: subprocess.Popen[str] | None = None
    try:
        wait_started()
        follow = subprocess.Popen(
            [KUBECTL, "logs", "-f", LOAD_POD, "-n", NS],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert follow.stdout is not None
        for line in follow.stdout:
            log.write(line)
            log.flush()
            kind, _, rest = line.strip().partition(" ")
            if kind == "SMOKE":
                smoke = json.loads(rest)
                items = ", ".join(f"#{i['id']} ({i['score']:.3f})" for i in smoke["items"])
                say(f"smoke run {smoke['run_id']}: answered in {smoke['ms']} ms, top items {items}")
                print(
                    f"\n=== [{time.strftime('%H:%M:%S')}] open-loop load from the pod ({PROFILE}: "
                    f"{RPS / 2:g} -> {RPS:g} req/s, a spike to {2 * RPS:g}) for {SECONDS:g}s -> "
                    f"POST /v1/runs/sync (line every {REPORT_EVERY_S}s)",
                    flush=True,
                )
            elif kind == "WINDOW":
                w = json.loads(rest)
                w["replicas"] = replica_counts()
                windows.append(w)
                say(window_line(w, slo_ms, w["replicas"]))
                for message in decisions.new(w["t"]):
                    say(f"         controller: {message}")
                if missing := metrics_unavailable():
                    say(f"         controller: MetricsUnavailable: {missing}")
            elif kind == "SUMMARY":
                summary = json.loads(rest)
            elif line.strip():
                say(f"load pod: {line.rstrip()}")
        follow.wait(timeout=30)
    except SystemExit:
        say("interrupted: deleting the load pod (no summary)")
        raise
    finally:
        if follow is not None and follow.poll() is None:
            follow.kill()
        log.close()
        delete_load_pod(wait=False)
    if summary is None:
        say(f"the load pod gave no summary (its log: {RUN}/load-pod.log)")
        return 1
    print_summary(summary, slo_ms)
    say(f"  the controller made {len(decisions.log)} scaling decisions during the load")
    if windows:
        say(f"  plot of the run: {controller_plot(windows, decisions.log, slo_ms, RUN / PLOT)}")
    return 0 if summary["ok"] and summary["errors"] <= 0.01 * max(1, summary["sent"]) else 1
