"""Shared pieces of the operator e2e tests (a plain module, so tests can import it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentscale import kinds
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "crds"
EXAMPLES = REPO / "workloads" / "examples"
WRITE_VERBS = {"POST", "PUT", "PATCH", "DELETE", "APPLY", "CREATE", "UPDATE"}
OWNED_KINDS = ",".join(k.plural for k in kinds.OWNED)  # for `kubectl get`
WRITTEN = {k.plural for k in kinds.WRITTEN}  # what an idle operator must not write


def write_requests(metrics_text: str, resources: set[str]) -> int:
    """Sum apiserver_request_total over write verbs for the given resources."""
    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != "apiserver_request":  # the parser drops the counter's _total suffix
            continue
        for sample in family.samples:
            if sample.name != "apiserver_request_total":
                continue
            if sample.labels.get("verb") in WRITE_VERBS and sample.labels.get("resource") in resources:
                total += sample.value
    return int(total)


# --- workflows in e2e tests

REDIS = {"redisUrl": "redis://redis.invalid:6379/0"}


def workflow(name: str, steps: list[dict[str, Any]], models: list[dict[str, Any]] | None = None) -> dict:
    return {
        "apiVersion": "agentscale.io/v1alpha1",
        "kind": "AgentWorkflow",
        "metadata": {"name": name},
        "spec": {"queue": REDIS, "steps": steps, "models": models or []},
    }


def get_wf(kubectl: Any, ns: str, name: str) -> dict[str, Any]:
    return kubectl.json("-n", ns, "get", "agentworkflow", name)


def condition(wf: dict[str, Any], ctype: str) -> dict[str, Any]:
    for c in (wf.get("status") or {}).get("conditions") or []:
        if c["type"] == ctype:
            return c
    return {}


def wait_condition(
    kubectl: Any, wait_for: Any, ns: str, name: str, ctype: str, status: str, timeout: float = 120
) -> dict:
    def check() -> dict[str, Any] | None:
        wf = get_wf(kubectl, ns, name)
        c = condition(wf, ctype)
        gen = wf["metadata"]["generation"]
        if c.get("status") == status and c.get("observedGeneration") == gen:
            return wf
        return None

    return wait_for(check, timeout=timeout, interval=1, message=f"{name} {ctype}={status}")
