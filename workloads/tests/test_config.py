"""Unit tests of the worker configuration: the workflow graph and the settings from the environment."""

from __future__ import annotations

import pytest
from agentscale_worker.config import Graph, GraphError, Settings
from agentscale_worker.examples import graph


def test_graph_sources_sinks_and_join_predecessors() -> None:
    g = graph("driving-perception")
    assert g.sources == ("detect",)
    assert g.sinks == ("plan",)
    assert g.predecessors("plan") == ("estimate-depth", "track")
    assert g.topological_order()[0] == "detect" and g.topological_order()[-1] == "plan"
    assert Graph.from_json(g.to_json()) == g


def test_graph_rejects_cycles_and_unknown_steps() -> None:
    with pytest.raises(GraphError, match="cycle"):
        Graph.from_dict({"steps": {"a": {"next": ["b"]}, "b": {"next": ["a"]}, "c": {"next": ["a"]}}})
    with pytest.raises(GraphError, match="unknown steps"):
        Graph.from_dict({"steps": {"a": {"next": ["zz"]}}})
    with pytest.raises(GraphError, match="not JSON"):
        Graph.from_json("{")


def test_settings_defaults_and_env() -> None:
    s = Settings.from_env({})
    assert s.concurrency == 8 and s.load_balancing == "least-outstanding" and s.graph.sinks == ("main",)
    env = {
        "AGENTSCALE_GRAPH": graph("shop-recs").to_json(),
        "AGENTSCALE_STEP": "rank",
        "AGENTSCALE_BATCH_MAX_SIZE": "16",
        "AGENTSCALE_BATCH_MAX_WAIT_MS": "2.5",
        "AGENTSCALE_PRIORITY": "",
    }
    s = Settings.from_env(env)
    assert (s.step, s.batch_max_size, s.batch_max_wait_ms, s.priority) == ("rank", 16, 2.5, 0)
    with pytest.raises(GraphError, match="not in the graph"):
        Settings.from_env({**env, "AGENTSCALE_STEP": "nope"})
