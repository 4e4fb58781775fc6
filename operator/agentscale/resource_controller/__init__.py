"""The resource controller: sensors (Prometheus), a pure decider, hands (the scale subresource), a loop.

Module map: job, then what it may import.

- ``snapshot``: frozen inputs (parts, signals, bounds, the DAG) and ``Decision``. Imports
  ``agentscale.api.models`` (``Scaling``: its bounds and ownership rules, the one home of both).
- ``config``: ``PolicyConfig``, every knob with its default. Standard library.
- ``queueing``: Little's law, backlog drain, M/M/c (Erlang C) quantiles. Standard library.
- ``budgets``: the p95 target split along the DAG into per-part budgets. snapshot, config.
- ``forecast``: Holt's trend forecast; feed-forward rates down the DAG. snapshot, config.
- ``state``: what the decider remembers between cycles, as values. forecast.
- ``rules``: mode queue (lag, queue time, rate) and mode slo sizing. snapshot, config, queueing, forecast.
- ``stabilize``: panic, scale to zero, window, tolerance, cooldown, step limits. snapshot, config, queueing.
- ``decide``: ``decide(snapshot, state, config)`` -> decisions and the next state. All of the above.
- ``rightsize``: right-sizing's policy: a part's CPU and memory requests from its pods' observed usage
  (percentile and peak plus margin, floors, limits, threshold, one change per window). ``api.models``.
- ``rebalance``: GPU rebalancing's plan: the fewest evictions that free one node for a pod pending for GPUs
  (PDB allowance, minimum ready, SLO headroom), and ``headroom``. snapshot, budgets, ``api.models``.

Nothing above does I/O, reads the clock or imports kopf: time and every measurement are inputs. The modules
below are the ones that do, each kept to its job:

- ``promql``: the metric and label names and one PromQL query per signal (no I/O). snapshot, config.
- ``signals``: the sensors: reads every signal for every workflow with one batched query each (async
  HTTP to Prometheus), fail static per signal; ``assess``: one workflow's ``MetricsUnavailable`` (pure).
  promql, snapshot.
- ``metrics``: the controller's own Prometheus metrics and their ``/metrics`` endpoint. snapshot.
- ``leader``: leader election on a ``coordination.k8s.io`` Lease of its own (client-go's algorithm).
  ``kinds``, ``kube``.
- ``actuator``: the hands: the scale subresource (own field manager), Events, ``lastScalingDecision``,
  the ``MetricsUnavailable`` condition; only parts whose replicas the controller owns. snapshot,
  ``api.models``, ``kube``.
- ``rebalance_actuator``: GPU rebalancing's hands: lists nodes, pods and PDBs only while a workflow pod is
  short of GPUs, nominates it, evicts one pod per cycle (``pods/eviction``), ``Rebalanced`` Events. rebalance,
  ``cache``, ``kube``, ``pending``.
- ``rightsize_signals``: per-pod CPU percentile, memory peak and coverage over a window (cAdvisor's
  container series, else the process's own), one query per measure for every pod. rightsize, signals.
- ``rightsize_actuator``: right-sizing's hands: lists the pods of parts with ``rightsizing.enabled``, resizes
  them in place (``pods/resize``), ``status.rightsizing`` and ``Rightsized`` Events. rightsize,
  rightsize_signals, ``cache``, ``kube``.
- ``loop``: the leader-only cycle: one read, then per workflow in the cluster cache snapshot, ``decide``,
  fail static, actuate, report ``MetricsUnavailable``; then GPU rebalancing, and right-sizing when due. All
  of the above, ``cache``, ``status``.
"""

from agentscale.resource_controller.config import PolicyConfig
from agentscale.resource_controller.decide import Outcome, decide
from agentscale.resource_controller.snapshot import (
    BatchProfile,
    Bounds,
    Decision,
    Direction,
    Part,
    PartKind,
    Rule,
    Signals,
    WorkflowSnapshot,
)
from agentscale.resource_controller.state import PartState, WorkflowState

__all__ = [
    "BatchProfile",
    "Bounds",
    "Decision",
    "Direction",
    "Outcome",
    "Part",
    "PartKind",
    "PartState",
    "PolicyConfig",
    "Rule",
    "Signals",
    "WorkflowSnapshot",
    "WorkflowState",
    "decide",
]
