"""Right-sizing, the sensors: what each pod's main container used over a window, one query per measure.

Per pod, not per part: the container metrics that most clusters have (cAdvisor's, scraped from each kubelet)
carry only ``namespace``, ``pod`` and ``container``, never the workflow's labels, so the controller maps a
pod to its part by the pod's own labels (it lists the pods it resizes anyway) and takes the max over the
part's pods itself (``rightsize.recommend``). Each query covers every pod of every workflow at once; parts
that share a window and a percentile share the queries (one set per distinct pair in use), each filtered to
the namespaces of the parts that use it.

Two sources, in this order per container:

1. ``cadvisor``: ``container_cpu_usage_seconds_total`` and ``container_memory_working_set_bytes`` (what the
   kubelet and the OOM killer count), where Prometheus scrapes the kubelets' ``/metrics/cadvisor``.
2. ``process``: ``process_cpu_seconds_total`` and ``process_resident_memory_bytes``, which every worker and
   gateway exports itself (prometheus_client's process collector; the scrape job of ``promql`` labels them
   with ``namespace``, ``workflow`` and ``pod``). They describe the container's main process, which is the
   whole of a worker. Triton exports nothing per process (its ``nv_cpu_*`` series are the node's), so model
   servers are right-sized only where cAdvisor's series are scraped.

metrics-server is not read: it holds only the latest sample, so a percentile over a window would need the
controller to keep its own history, lost at every leader change.

Measures, each over ``[window]``: ``cpu`` the ``percentile`` of the per-second usage rate (a subquery at
``step`` over rates of ``rate_window``), ``memory`` the peak, ``observed`` the seconds since the first sample
in the window (a pod observed for less than ``min_coverage`` x the window gets no decision).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from agentscale.resource_controller.promql import duration
from agentscale.resource_controller.rightsize import Usage
from agentscale.resource_controller.signals import PrometheusReader, SignalError

CADVISOR_CPU = "container_cpu_usage_seconds_total"
CADVISOR_MEMORY = "container_memory_working_set_bytes"
PROCESS_CPU = "process_cpu_seconds_total"
PROCESS_MEMORY = "process_resident_memory_bytes"


class Source(StrEnum):
    cadvisor = "cadvisor"
    process = "process"


class Measure(StrEnum):
    cpu = "cpu"
    memory = "memory"
    observed = "observed"


class Group(NamedTuple):
    """Parts that share their queries: the same window and CPU percentile."""

    window_s: int
    percentile: int


class Container(NamedTuple):
    namespace: str
    pod: str
    container: str
    """Empty for the process source (the pod's main process)."""


@dataclass(frozen=True)
class Timing:
    """The rate window and the subquery step of a window: a rate needs a few samples (the default scrape
    intervals are 15-30 s; docs/tuning.md asks for a window of at least ten scrapes), and about 60 steps
    give a percentile to within a step."""

    rate_s: int
    step_s: int

    @classmethod
    def of(cls, window_s: int) -> Timing:
        return cls(rate_s=min(60, max(10, window_s // 10)), step_s=max(1, window_s // 60))


def _selector(source: Source, namespaces: Collection[str]) -> str:
    ns = "|".join(sorted(namespaces))
    match = f', namespace=~"{ns}"' if ns else ""
    if source == Source.cadvisor:
        return f'{{container!="", container!="POD"{match}}}'
    return f'{{workflow!="", pod!=""{match}}}'


def queries(group: Group, namespaces: Collection[str]) -> dict[tuple[Source, Measure], str]:
    """Every measure from every source for the pods of ``namespaces`` (all namespaces when empty)."""
    t = Timing.of(group.window_s)
    w, r, st = duration(group.window_s), duration(t.rate_s), duration(t.step_s)
    q = group.percentile / 100
    out = {}
    for source, cpu, mem, by in (
        (Source.cadvisor, CADVISOR_CPU, CADVISOR_MEMORY, "namespace, pod, container"),
        (Source.process, PROCESS_CPU, PROCESS_MEMORY, "namespace, pod"),
    ):
        sel = _selector(source, namespaces)
        out[(source, Measure.cpu)] = (
            f"quantile_over_time({q:g}, sum by ({by}) (rate({cpu}{sel}[{r}]))[{w}:{st}])"
        )
        out[(source, Measure.memory)] = f"max by ({by}) (max_over_time({mem}{sel}[{w}]))"
        out[(source, Measure.observed)] = (
            f"time() - min by ({by}) (min_over_time(timestamp({mem}{sel})[{w}:{st}]))"
        )
    return out


def parse(source: Source, body: Any) -> dict[Container, float]:
    """A vector answer as values per container; series without ``namespace`` or ``pod``, and values that are
    not finite, are left out."""
    out = {}
    for item in (body.get("data") or {}).get("result") or []:
        labels = item.get("metric") or {}
        ns, pod = labels.get("namespace"), labels.get("pod")
        if not (ns and pod):
            continue
        container = labels.get("container", "") if source == Source.cadvisor else ""
        try:
            x = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if math.isfinite(x):
            out[Container(ns, pod, container)] = x
    return out


@dataclass(frozen=True)
class UsageReading:
    """What one read found, per group; ``error`` when Prometheus did not answer every query (fail static:
    the caller does nothing this round)."""

    values: Mapping[Group, Mapping[tuple[Source, Measure], Mapping[Container, float]]]
    error: SignalError | None = None

    def usage(self, group: Group, namespace: str, pod: str, container: str) -> Usage | None:
        """One container's usage: cAdvisor's where it has all three measures, else its pod's process
        series, else None."""
        got = self.values.get(group) or {}
        for source, key in (
            (Source.cadvisor, Container(namespace, pod, container)),
            (Source.process, Container(namespace, pod, "")),
        ):
            m = [(got.get((source, measure)) or {}).get(key) for measure in Measure]
            if all(v is not None for v in m):
                cpu, memory, observed = (float(v) for v in m)  # type: ignore[arg-type]
                return Usage(cpu, memory, observed, source.value)
        return None


async def read_usage(reader: PrometheusReader, groups: Mapping[Group, Collection[str]]) -> UsageReading:
    """Every query of every group at once (``groups``: the namespaces each is for)."""
    jobs = [(g, k, q) for g, namespaces in groups.items() for k, q in queries(g, namespaces).items()]
    answers = await asyncio.gather(*(reader.instant(q) for _, _, q in jobs))
    values: dict[Group, dict[tuple[Source, Measure], Mapping[Container, float]]] = {}
    for (g, k, _), (body, error) in zip(jobs, answers, strict=True):
        if error is not None and not error.kind.answered:
            return UsageReading({}, error)
        values.setdefault(g, {})[k] = parse(k[0], body) if body is not None else {}
    return UsageReading(values)
