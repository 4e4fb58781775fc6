"""Settings of a step worker or gateway: read once from the environment the operator injects, or built
directly by tests. Every field has a default so a worker runs on a laptop with no environment at all."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class GraphError(ValueError):
    """AGENTSCALE_GRAPH is not a usable DAG."""


# The AgentWorkflow API names priorities; the runtime compares integers (a request may carry its own).
PRIORITY_LEVELS = {"batch": 0, "low": 1, "normal": 2, "high": 3, "critical": 4}


def priority_value(raw: Any) -> int:
    """A priority as an integer: a name from the API (``high``) or a number (``3``)."""
    if raw is None or raw == "":
        return PRIORITY_LEVELS["normal"]
    if isinstance(raw, str) and raw.strip().lower() in PRIORITY_LEVELS:
        return PRIORITY_LEVELS[raw.strip().lower()]
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise GraphError(f"priority {raw!r}: use one of {', '.join(PRIORITY_LEVELS)} or an integer") from None


@dataclass(frozen=True)
class Graph:
    """The workflow DAG: step -> model and step -> next steps, plus the SLO."""

    steps: dict[str, tuple[str | None, tuple[str, ...]]]
    priority: int = 0
    p95_latency_ms: int = 1000
    target_rps: float = 0.0

    @classmethod
    def from_json(cls, text: str) -> Graph:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise GraphError(f"AGENTSCALE_GRAPH is not JSON: {e}") from e
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Graph:
        steps_raw = raw.get("steps")
        if not isinstance(steps_raw, dict) or not steps_raw:
            raise GraphError("AGENTSCALE_GRAPH needs a non-empty 'steps' object")
        steps: dict[str, tuple[str | None, tuple[str, ...]]] = {}
        for name, s in steps_raw.items():
            nxt = tuple((s or {}).get("next") or ())
            steps[name] = ((s or {}).get("model") or None, nxt)
        for name, (_, nxt) in steps.items():
            unknown = [n for n in nxt if n not in steps]
            if unknown:
                raise GraphError(f"step {name!r} feeds unknown steps {unknown}")
        slo = raw.get("slo") or {}
        g = cls(
            steps=steps,
            priority=priority_value(raw.get("priority")),
            p95_latency_ms=int(slo.get("p95LatencyMs") or 1000),
            target_rps=float(slo.get("targetThroughputRps") or 0.0),
        )
        g.topological_order()  # raises on a cycle
        return g

    def to_json(self) -> str:
        return json.dumps(
            {
                "steps": {k: {"model": m, "next": list(n)} for k, (m, n) in self.steps.items()},
                "priority": self.priority,
                "slo": {"p95LatencyMs": self.p95_latency_ms, "targetThroughputRps": self.target_rps},
            },
            separators=(",", ":"),
        )

    def next_of(self, step: str) -> tuple[str, ...]:
        return self.steps[step][1]

    def predecessors(self, step: str) -> tuple[str, ...]:
        return tuple(sorted(s for s, (_, nxt) in self.steps.items() if step in nxt))

    @property
    def sources(self) -> tuple[str, ...]:
        fed = {n for _, nxt in self.steps.values() for n in nxt}
        return tuple(s for s in self.steps if s not in fed)

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(s for s, (_, nxt) in self.steps.items() if not nxt)

    def topological_order(self) -> list[str]:
        indeg = {s: len(self.predecessors(s)) for s in self.steps}
        ready = [s for s, d in indeg.items() if d == 0]
        order: list[str] = []
        while ready:
            s = ready.pop(0)
            order.append(s)
            for n in self.next_of(s):
                indeg[n] -= 1
                if indeg[n] == 0:
                    ready.append(n)
        if len(order) != len(self.steps):
            raise GraphError(f"AGENTSCALE_GRAPH has a cycle among {sorted(set(self.steps) - set(order))}")
        return order


DEFAULT_GRAPH = '{"steps":{"main":{"model":null,"next":[]}}}'


def _env(env: Mapping[str, str], key: str, default: str) -> str:
    value = env.get(key, "")
    return value if value != "" else default


@dataclass(frozen=True)
class Settings:
    workflow: str = "local"
    namespace: str = "default"
    step: str = ""
    redis_url: str = "redis://127.0.0.1:6379/0"
    graph: Graph = field(default_factory=lambda: Graph.from_json(DEFAULT_GRAPH))
    model: str = ""
    triton_host: str = ""  # headless Service name, or "host:port,host:port" for a fixed list
    triton_grpc_port: int = 8001
    concurrency: int = 8
    batch_max_size: int = 1
    batch_max_wait_ms: float = 0.0
    load_balancing: str = "least-outstanding"
    max_deliveries: int = 5
    metrics_port: int = 9090
    gateway_port: int = 8080
    priority: int = 0
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    claim_idle_ms: int = 30_000  # a pending message idle this long belongs to a dead consumer
    claim_interval_s: float = 5.0
    retry_base_s: float = 0.05
    retry_max_s: float = 5.0
    drain_timeout_s: float = 25.0  # under the pod's terminationGracePeriodSeconds (30 s default)
    dns_refresh_s: float = 5.0
    request_timeout_s: float = 30.0
    # how long a message keeps retrying (without spending deliveries) while its model is unavailable;
    # past it the message is dead-lettered
    model_unavailable_budget_s: float = 300.0
    result_ttl_s: int = 3600  # run records, done markers and joins expire this long after their last write
    stream_maxlen: int = 1_000_000
    dlq_maxlen: int = 10_000  # dead letters kept per step (each carries up to 100 kB of its input)
    results_retention_s: int = 600  # the results stream keeps this much history (gateways follow it live)
    validator: str = ""  # gateway: package.module:function checking run inputs; "" accepts any JSON input
    redis_max_connections: int = 64  # per process; a command waits for a free one ...
    redis_pool_timeout_s: float = 5.0  # ... this long, then the gateway sheds (429), never 503
    # gateway hardening (docs/dataplane.md, "Gateway security")
    gateway_tokens_dir: str = ""  # one bearer token per file; "" runs open (logged)
    max_body_bytes: int = 1 << 20  # per POST route
    max_json_depth: int = 32
    parse_concurrency: int = 4  # bodies parsed and validated at once (in worker threads)
    body_budget_bytes: int = 64 << 20  # request bytes read and not yet parsed, all requests together
    # the step's result cache (step_cache.py; docs/dataplane.md); ttl 0: no cache
    result_cache_ttl_s: int = 0
    result_cache_max_entries: int = 10_000
    result_cache_max_entry_bytes: int = 1 << 20
    result_cache_version: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        e = os.environ if env is None else env
        graph = Graph.from_json(_env(e, "AGENTSCALE_GRAPH", DEFAULT_GRAPH))
        values: dict[str, Any] = dict(
            workflow=_env(e, "AGENTSCALE_WORKFLOW", "local"),
            namespace=_env(e, "AGENTSCALE_NAMESPACE", "default"),
            step=_env(e, "AGENTSCALE_STEP", ""),
            redis_url=_env(e, "AGENTSCALE_REDIS_URL", "redis://127.0.0.1:6379/0"),
            graph=graph,
            model=_env(e, "AGENTSCALE_MODEL", ""),
            triton_host=_env(e, "AGENTSCALE_TRITON_HOST", ""),
            triton_grpc_port=int(_env(e, "AGENTSCALE_TRITON_GRPC_PORT", "8001")),
            concurrency=max(1, int(_env(e, "AGENTSCALE_CONCURRENCY", "8"))),
            batch_max_size=max(1, int(_env(e, "AGENTSCALE_BATCH_MAX_SIZE", "1"))),
            batch_max_wait_ms=max(0.0, float(_env(e, "AGENTSCALE_BATCH_MAX_WAIT_MS", "0"))),
            load_balancing=_env(e, "AGENTSCALE_LOAD_BALANCING", "least-outstanding"),
            max_deliveries=max(1, int(_env(e, "AGENTSCALE_MAX_DELIVERIES", "5"))),
            metrics_port=int(_env(e, "AGENTSCALE_METRICS_PORT", "9090")),
            gateway_port=int(_env(e, "AGENTSCALE_GATEWAY_PORT", "8080")),
            priority=priority_value(_env(e, "AGENTSCALE_PRIORITY", str(graph.priority))),
            claim_idle_ms=int(_env(e, "AGENTSCALE_CLAIM_IDLE_MS", "30000")),
            request_timeout_s=float(_env(e, "AGENTSCALE_REQUEST_TIMEOUT_S", "30")),
            model_unavailable_budget_s=float(_env(e, "AGENTSCALE_MODEL_UNAVAILABLE_BUDGET_S", "300")),
            validator=_env(e, "AGENTSCALE_VALIDATOR", ""),
            result_ttl_s=max(1, int(_env(e, "AGENTSCALE_RESULT_TTL_S", "3600"))),
            dlq_maxlen=max(1, int(_env(e, "AGENTSCALE_DLQ_MAXLEN", "10000"))),
            redis_max_connections=max(2, int(_env(e, "AGENTSCALE_REDIS_MAX_CONNECTIONS", "64"))),
            redis_pool_timeout_s=max(0.01, float(_env(e, "AGENTSCALE_REDIS_POOL_TIMEOUT_S", "5"))),
            gateway_tokens_dir=_env(e, "AGENTSCALE_GATEWAY_TOKENS_DIR", ""),
            max_body_bytes=max(1024, int(_env(e, "AGENTSCALE_GATEWAY_MAX_BODY_BYTES", str(1 << 20)))),
            max_json_depth=max(2, int(_env(e, "AGENTSCALE_GATEWAY_MAX_JSON_DEPTH", "32"))),
            parse_concurrency=max(1, int(_env(e, "AGENTSCALE_GATEWAY_PARSE_CONCURRENCY", "4"))),
            body_budget_bytes=max(
                1 << 20, int(_env(e, "AGENTSCALE_GATEWAY_BODY_BUDGET_BYTES", str(64 << 20)))
            ),
            result_cache_ttl_s=max(0, int(_env(e, "AGENTSCALE_RESULT_CACHE_TTL_S", "0"))),
            result_cache_max_entries=max(1, int(_env(e, "AGENTSCALE_RESULT_CACHE_MAX_ENTRIES", "10000"))),
            result_cache_max_entry_bytes=max(
                1, int(_env(e, "AGENTSCALE_RESULT_CACHE_MAX_ENTRY_BYTES", str(1 << 20)))
            ),
            result_cache_version=_env(e, "AGENTSCALE_RESULT_CACHE_VERSION", ""),
        )
        values.update(overrides)
        s = cls(**values)
        if s.step and s.step not in s.graph.steps:
            raise GraphError(f"AGENTSCALE_STEP {s.step!r} is not in the graph {sorted(s.graph.steps)}")
        return s
