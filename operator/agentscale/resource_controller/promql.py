"""What the controller asks Prometheus: one PromQL query per signal, for every workflow at once.

Every query groups by ``namespace``, ``workflow`` and the part's label (``step`` or ``model``), so one answer
holds the signal of every part of every workflow, and its size grows with the parts, never the number of
queries. How a series gets those labels (docs/tuning.md, "Signals"):

- workers and the gateway label their own series with ``namespace`` (``AGENTSCALE_NAMESPACE``) and
  ``workflow`` (``agentscale_worker.metrics.WORKFLOW_LABELS``), steps also with ``step``;
- Triton's series carry only its own ``model``/``version``: the scrape job's relabelling
  (:data:`SCRAPE_RELABEL_CONFIGS`) adds ``namespace``, ``workflow`` and ``model`` from the pod's namespace and
  its ``agentscale.io/workflow`` and ``agentscale.io/model`` labels (Triton's own ``model`` becomes
  ``exported_model``).

Pure: names, windows and expressions only. ``signals`` sends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agentscale.render import labels as L
from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.snapshot import PartKind

NAMESPACE, WORKFLOW = "namespace", "workflow"
PART_LABEL = {PartKind.step: "step", PartKind.model: "model"}
"""The label naming a part in its series: the step a worker runs, the model server a Triton pod belongs to."""

# The data plane's series (workloads/agentscale_worker/metrics.py; a test checks the names and labels).
MESSAGES = "agentscale_messages_total"
QUEUE_LAG = "agentscale_queue_lag"
QUEUE_PENDING = "agentscale_queue_pending"
STEP_LATENCY = "agentscale_step_latency_seconds"
TRITON_CLIENT_LATENCY = "agentscale_triton_request_seconds"
# Triton's own series (per model and version, cumulative since the server started).
NV_SUCCESS = "nv_inference_request_success"
NV_INFERENCES = "nv_inference_count"
NV_EXECUTIONS = "nv_inference_exec_count"
NV_QUEUE_US = "nv_inference_queue_duration_us"
NV_COMPUTE_US = "nv_inference_compute_infer_duration_us"


class Signal(StrEnum):
    """One batched query; its name says the part kind and the unit."""

    step_arrival_rps = "step_arrival_rps"
    step_arrival_rps_short = "step_arrival_rps_short"
    step_queue_lag = "step_queue_lag"
    step_queue_pending = "step_queue_pending"
    step_p95_latency_s = "step_p95_latency_s"
    step_mean_latency_s = "step_mean_latency_s"
    model_arrival_rps = "model_arrival_rps"
    model_arrival_rps_short = "model_arrival_rps_short"
    model_queue_time_s = "model_queue_time_s"
    model_compute_time_s = "model_compute_time_s"
    model_service_time_s = "model_service_time_s"
    model_mean_batch = "model_mean_batch"
    model_p95_latency_s = "model_p95_latency_s"

    @property
    def kind(self) -> PartKind:
        return PartKind.step if self.value.startswith("step_") else PartKind.model


@dataclass(frozen=True)
class Windows:
    """Range windows of the rate and quantile queries. Each must span at least two scrapes (four is
    safer): at the 5 s scrape interval docs/tuning.md recommends, the defaults hold 12 and 3."""

    stable_s: float = 60.0
    """Arrival rates, latencies, queue and service times (Knative's stable window)."""
    short_s: float = 15.0
    """Arrival rates for panic: a burst shows here first."""
    quantile: float = PolicyConfig.latency_quantile
    """The latency quantile (the policy's ``latency_quantile``; p95)."""

    def __post_init__(self) -> None:
        if not 0 < self.short_s <= self.stable_s:
            raise ValueError(f"windows need 0 < short <= stable, got {self.short_s}, {self.stable_s}")
        if not 0 < self.quantile < 1:
            raise ValueError(f"quantile must be in (0, 1), got {self.quantile}")


def duration(seconds: float) -> str:
    """A PromQL range: whole seconds, else whole milliseconds (PromQL durations take no fractions)."""
    ms = max(1, round(seconds * 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def by(kind: PartKind) -> str:
    return f"{NAMESPACE}, {WORKFLOW}, {PART_LABEL[kind]}"


def _rate(metric: str, kind: PartKind, window: str) -> str:
    return f"sum by ({by(kind)}) (rate({metric}[{window}]))"


def _quantile(histogram: str, kind: PartKind, window: str, q: float) -> str:
    return f"histogram_quantile({q}, sum by (le, {by(kind)}) (rate({histogram}_bucket[{window}])))"


def step_arrivals(window: str) -> str:
    """Messages entering a step's stream per second: those finished (any outcome) plus the growth of what
    waits and what runs (lag and pending, each the max over the step's workers: they all see the stream).
    A burst beyond capacity shows as growth even while completions are capped. A term without samples yet
    (no message finished; one lag sample) counts 0 through ``or 0 * <gauge>``, so every step whose workers
    report lag has a value (at zero replicas the gateway reports it), and each series is read once; never
    below zero."""
    k = PartKind.step
    done = f"sum by ({by(k)}) (rate({MESSAGES}[{window}]) or 0 * {QUEUE_LAG})"
    lag = f"max by ({by(k)}) (deriv({QUEUE_LAG}[{window}]) or 0 * {QUEUE_LAG})"
    # a step at zero has no worker to report pending, only the gateway's lag: then nothing is pending
    pending = (
        f"(max by ({by(k)}) (deriv({QUEUE_PENDING}[{window}]) or 0 * {QUEUE_PENDING})"
        f" or max by ({by(k)}) (0 * {QUEUE_LAG}))"
    )
    return f"clamp_min({done} + {lag} + {pending}, 0)"


def queries(w: Windows | None = None) -> dict[Signal, str]:
    """Every signal's PromQL. Ratios of rates are NaN without traffic: the reader maps NaN to unknown,
    except Triton queue time, which is 0 when a server answered no requests (nothing waited)."""
    w = w or Windows()
    st, sh, q = duration(w.stable_s), duration(w.short_s), w.quantile
    s, m = PartKind.step, PartKind.model
    latency_sum, latency_count = _rate(f"{STEP_LATENCY}_sum", s, st), _rate(f"{STEP_LATENCY}_count", s, st)
    success = _rate(NV_SUCCESS, m, st)
    inferences, executions = _rate(NV_INFERENCES, m, st), _rate(NV_EXECUTIONS, m, st)
    compute = _rate(NV_COMPUTE_US, m, st)
    return {
        Signal.step_arrival_rps: step_arrivals(st),
        Signal.step_arrival_rps_short: step_arrivals(sh),
        # every worker of a step reports the same stream: max, never sum
        Signal.step_queue_lag: f"max by ({by(s)}) ({QUEUE_LAG})",
        Signal.step_queue_pending: f"max by ({by(s)}) ({QUEUE_PENDING})",
        Signal.step_p95_latency_s: _quantile(STEP_LATENCY, s, st, q),
        # time a message holds one of a worker's slots; / concurrency = replica-seconds per message
        Signal.step_mean_latency_s: f"{latency_sum} / {latency_count}",
        Signal.model_arrival_rps: inferences,
        Signal.model_arrival_rps_short: _rate(NV_INFERENCES, m, sh),
        Signal.model_queue_time_s: (
            f"({_rate(NV_QUEUE_US, m, st)} / ({success} > 0)) / 1e6 or ({success} == 0)"
        ),
        # per request, as a request sees it: each request of a batch counts the batch's whole compute time
        Signal.model_compute_time_s: f"{compute} / {success} / 1e6",
        # busy time per inference: compute per request x requests per execution = one execution's time,
        # x executions per second = busy seconds per second; / inferences per second
        Signal.model_service_time_s: f"{compute} * {executions} / ({success} * {inferences}) / 1e6",
        Signal.model_mean_batch: f"{inferences} / {executions}",
        # what the calling steps saw (client side, agentscale_worker.triton): Triton exports no histogram
        Signal.model_p95_latency_s: _quantile(TRITON_CLIENT_LATENCY, m, st, q),
    }


RECORDED_PREFIX = "agentscale:"
RULE_GROUP = "agentscale-resource-controller"


def recorded(signal: Signal) -> str:
    """The series a recording rule writes a signal's query into (``agentscale:step_arrival_rps``)."""
    return f"{RECORDED_PREFIX}{signal.value}"


def recorded_queries() -> dict[Signal, str]:
    """Every signal read from its recorded series: a plain selector per signal, so a read costs what the
    recorded series hold (one per part), not what the rules scan."""
    return {s: recorded(s) for s in Signal}


def recording_rules(w: Windows | None = None, interval_s: float | None = None) -> dict[str, Any]:
    """A Prometheus rule file (``rule_files``, or a PrometheusRule's ``spec``) that records every signal's
    query as :func:`recorded` ``(signal)``, each evaluated by Prometheus every ``interval_s`` (its global
    ``evaluation_interval`` when None). The controller reads them with ``AGENTSCALE_RC_RECORDED_SIGNALS=1``.
    A recorded value is up to one evaluation interval older than the query's: keep the interval at or below
    the controller's cycle."""
    group: dict[str, Any] = {"name": RULE_GROUP}
    if interval_s is not None:
        group["interval"] = duration(interval_s)
    group["rules"] = [{"record": recorded(s), "expr": q} for s, q in queries(w).items()]
    return {"groups": [group]}


def _label(name: str) -> str:
    """A Kubernetes label key as Prometheus service discovery spells it (``agentscale.io/x`` ->
    ``agentscale_io_x``)."""
    return "".join(c if c.isalnum() else "_" for c in name)


POD_META = "__meta_kubernetes_pod_"

SCRAPE_RELABEL_CONFIGS: list[dict[str, Any]] = [
    # agentscale's pods that ask to be scraped (render/workers.py and render/triton.py annotate them)
    {
        "source_labels": [f"{POD_META}label_{_label('app.kubernetes.io/part-of')}"],
        "regex": "agentscale",
        "action": "keep",
    },
    {
        "source_labels": [f"{POD_META}annotation_prometheus_io_scrape"],
        "regex": "true",
        "action": "keep",
    },
    {
        "source_labels": ["__address__", f"{POD_META}annotation_prometheus_io_port"],
        "regex": r"([^:]+)(?::\d+)?;(\d+)",
        "replacement": "$1:$2",
        "target_label": "__address__",
    },
    {
        "source_labels": [f"{POD_META}annotation_prometheus_io_path"],
        "regex": "(.+)",
        "target_label": "__metrics_path__",
    },
    # the mapping to the AgentWorkflow: namespace, workflow, and (Triton pods) the model server
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": NAMESPACE},
    {"source_labels": [f"{POD_META}label_{_label(L.WORKFLOW_LABEL)}"], "target_label": WORKFLOW},
    {
        "source_labels": [f"{POD_META}label_{_label(L.MODEL_LABEL)}"],
        "regex": "(.+)",
        "target_label": PART_LABEL[PartKind.model],
    },
    {"source_labels": [f"{POD_META}name"], "target_label": "pod"},
]
"""``relabel_configs`` of the ``kubernetes_sd_configs`` (role pod) job that scrapes agentscale's pods,
documented in docs/tuning.md ("Signals") and used as is by the tests. Workers and the gateway label their
series themselves; the target labels carry the same values (the series' own copies become ``exported_*``)."""
