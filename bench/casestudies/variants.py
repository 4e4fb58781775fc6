"""The two configurations the case studies compare, as AgentWorkflow specs derived from the examples' YAML.

Pure functions over spec dictionaries: no process, no I/O beyond reading the example file. The operator's own
parser (``parse_spec``) validates the result, so a variant is always a spec a user could apply.

Both variants run the same replica budget: one replica of every step and of every model server (the
benchmark runs on one 2-core machine, where a second replica of a process adds no capacity; the examples'
replica counts are for a GPU cluster). What differs is the tuning:

- ``untuned``: what a spec gets when it names only the DAG and the models: no dynamic batching (Triton runs
  each request alone), one model instance per server, no client micro-batching (``batch`` 1), the default
  ``concurrency`` (8), round-robin balancing, no caches.
- ``tuned``: docs/tuning.md's settings, which the example YAML already carries for batching and concurrency:
  Triton dynamic batching as written (a model without a batcher gets one, 1 ms queue delay), instance groups
  as written, the worker's micro-batching and ``concurrency`` as written (at least 2x ``batch.maxSize``),
  ``least-latency`` balancing, and the caches where section 9 of the guide says they pay, which depends on
  the traffic (``run.TUNED`` names them per case).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from agentscale.api.models import AgentWorkflow, ModelServer, Step
from agentscale.api.validation import parse_spec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "workloads" / "examples"
CASES = {  # the article's case study -> (example file, workflow name)
    "recommendation": "recommendation.yaml",
    "voice-assistant": "voice-assistant.yaml",
    "perception": "perception.yaml",
}
DEFAULT_CONCURRENCY = Step.model_fields["concurrency"].default
RESPONSE_CACHE_SIZE = "64Mi"
RESULT_CACHE = {"ttlSeconds": 600, "maxEntries": 20_000}


def has_caching() -> bool:
    """Whether the API has the caching fields (issue 11's ``responseCache`` and ``resultCache``)."""
    return "responseCache" in ModelServer.model_fields and "resultCache" in Step.model_fields


def example(case: str) -> dict[str, Any]:
    """The example's manifest as written."""
    doc: dict[str, Any] = yaml.safe_load((EXAMPLES / CASES[case]).read_text())
    return doc


def _common(spec: dict[str, Any]) -> dict[str, Any]:
    """What both variants share: one replica of everything, and a gateway that runs open on loopback."""
    s = copy.deepcopy(spec)
    s.setdefault("gateway", {})["auth"] = {"enabled": False}
    for part in [*s.get("models", []), *s.get("steps", [])]:
        part["scaling"] = {"mode": "fixed", "replicas": 1}
    return s


def untuned(spec: dict[str, Any]) -> dict[str, Any]:
    s = _common(spec)
    for m in s.get("models", []):
        for key in ("dynamicBatching", "instanceGroups", "responseCache"):
            m.pop(key, None)
    for st in s.get("steps", []):
        for key in ("batch", "concurrency", "loadBalancing", "resultCache"):
            st.pop(key, None)
        st["loadBalancing"] = "round-robin"
    return s


def _named(name: str, names: tuple[str, ...]) -> bool:
    return "*" in names or name in names


def tuned(
    spec: dict[str, Any],
    cache_steps: tuple[str, ...] = (),
    cache_models: tuple[str, ...] = (),
    single_sample: tuple[str, ...] = (),
) -> dict[str, Any]:
    """docs/tuning.md's settings. Names select parts (``"*"``: all): ``cache_steps`` get the step result
    cache, ``cache_models`` Triton's response cache, ``single_sample`` steps send one sample per request (no
    micro-batching: Triton's response cache keys on the whole request, section 9 of the guide)."""
    s = _common(spec)
    caching = has_caching()
    for m in s.get("models", []):
        if m.get("maxBatchSize", 0) > 0 and not m.get("dynamicBatching"):
            m["dynamicBatching"] = {"maxQueueDelayMicroseconds": 1000}
        if caching and _named(m["name"], cache_models):
            m["responseCache"] = {"size": RESPONSE_CACHE_SIZE}
    for st in s.get("steps", []):
        st["loadBalancing"] = "least-latency"
        batch = st.get("batch") or {}
        if _named(st["name"], single_sample):
            st.pop("batch", None)
            batch = {}
        size = int(batch.get("maxSize", 1))
        st["concurrency"] = max(int(st.get("concurrency", DEFAULT_CONCURRENCY)), 2 * size)
        if caching and _named(st["name"], cache_steps):
            st["resultCache"] = dict(RESULT_CACHE)
    return s


def workflow(manifest: dict[str, Any], spec: dict[str, Any]) -> AgentWorkflow:
    """The variant as the operator sees it (validated by the operator's parser)."""
    meta = {"name": manifest["metadata"]["name"], "namespace": "bench"}
    return AgentWorkflow(metadata=meta, spec=parse_spec(spec))


def describe(spec: dict[str, Any]) -> dict[str, Any]:
    """The settings that differ between variants, per part, for the results file."""
    return {
        "models": {
            m["name"]: {
                k: m[k]
                for k in ("maxBatchSize", "dynamicBatching", "instanceGroups", "responseCache")
                if k in m
            }
            for m in spec.get("models", [])
        },
        "steps": {
            st["name"]: {
                k: st[k] for k in ("concurrency", "batch", "loadBalancing", "resultCache") if k in st
            }
            for st in spec.get("steps", [])
        },
    }
