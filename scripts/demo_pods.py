"""shop-recs' data plane as real pods on the demo cluster's real kubelet node (the host side of ``make
demo``'s default path; demo_local.py is the fallback without a real node).

- ``apply_shop_recs``: the gateway tokens Secret (auth is on by default), then the recommendation example with
  a spec override that suits this machine: ``spec.placement`` pins every pod to the real node, the model
  servers drop ``gpu`` (the node has none) and run the Triton image built here, and requests are small
  enough for two cores. The example file is not edited.
- ``run_pods``: the load runs in a pod (demo_loadpod.py in the worker image, from a ConfigMap), since the
  host cannot reach pod addresses; this module follows its logs and prints each 5 s window with the
  replicas of every step and model server read from the cluster, then a summary.
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
    for step in spec["steps"]:
        step["resources"] = {"requests": {"cpu": "20m", "memory": "128Mi"}}
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
    say(f"override of {EXAMPLE.relative_to(ROOT)}; the file is unchanged)")


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


def replicas() -> str:
    """ready/desired of every step and model server of the workflow (its Deployments)."""
    parts = []
    for d in kjson("get", "deploy", "-n", NS, "-l", f"agentscale.io/workflow={WORKFLOW}")["items"]:
        labels = d["metadata"]["labels"]
        part = labels.get("agentscale.io/step") or labels.get("agentscale.io/model")
        if part:
            ready = (d.get("status") or {}).get("readyReplicas") or 0
            parts.append(f"{part}={ready}/{d['spec'].get('replicas', 0)}")
    return " ".join(sorted(parts))


def ready() -> str:
    status, reason = ready_status(kjson("get", "aw", WORKFLOW, "-n", NS))
    return "True" if status == "True" else f"{status}/{reason}"


def window_line(w: dict[str, Any], slo_ms: float) -> str:
    if not w["sent"]:  # the last window: the load has stopped, answers still in flight arrive
        return f"[{w['t']:5.1f}s] (load stopped) the last {w['ok']} answers, p95 {w['p95_ms']:.0f} ms"
    mark = "ok" if w["p95_ms"] <= slo_ms else "OVER"
    dt = max(w["seconds"], 1e-6)
    return (
        f"[{w['t']:5.1f}s] offered {w['sent'] / dt:6.1f}/s  achieved {w['ok'] / dt:6.1f}/s  "
        f"p50 {w['p50_ms']:5.0f} ms  p95 {w['p95_ms']:5.0f} ms ({mark} vs SLO {slo_ms:g})  "
        f"429s {w['shed']:3d}  errors {w['errors']:3d}  replicas {replicas()}"
    )


def print_summary(s: dict[str, Any], slo_ms: float) -> None:
    say("")
    say(f"summary: {WORKFLOW} as pods on the real node, open loop at {RPS:g} req/s for {s['seconds']:.0f}s")
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
                    f"\n=== [{time.strftime('%H:%M:%S')}] open-loop load from the pod: {RPS:g} req/s for "
                    f"{SECONDS:g}s -> POST /v1/runs/sync (line every {REPORT_EVERY_S}s)",
                    flush=True,
                )
            elif kind == "WINDOW":
                say(window_line(json.loads(rest), slo_ms))
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
    return 0 if summary["ok"] and summary["errors"] <= 0.01 * max(1, summary["sent"]) else 1
