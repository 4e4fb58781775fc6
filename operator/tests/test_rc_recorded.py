"""Recorded signals: every signal's query as a Prometheus recording rule, and the controller reading the
recorded series instead (AGENTSCALE_RC_RECORDED_SIGNALS=1). Against a real Prometheus evaluating the rules
over the same generated fleet as test_resource_signals: the same values, one plain selector per signal."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from agentscale.resource_controller import promql as P
from agentscale.resource_controller.loop import LoopSettings
from agentscale.resource_controller.promql import Signal, Windows
from agentscale.resource_controller.signals import PrometheusReader
from prom_fleet import Counting, Exporter, scraped
from test_resource_signals import assert_expected, expected, fleet, settled_read

METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def test_one_rule_per_signal_recording_exactly_its_query() -> None:
    w = Windows(stable_s=30, short_s=10)
    doc = P.recording_rules(w, interval_s=15)
    (group,) = doc["groups"]
    assert group["name"] == P.RULE_GROUP and group["interval"] == "15s"
    assert {r["record"]: r["expr"] for r in group["rules"]} == {
        P.recorded(s): q for s, q in P.queries(w).items()
    }
    assert all(METRIC_NAME.match(r["record"]) for r in group["rules"])
    assert "interval" not in P.recording_rules(w)["groups"][0]  # Prometheus' evaluation_interval
    assert set(P.recorded_queries().values()) == {r["record"] for r in group["rules"]}


def test_promtool_accepts_the_rule_file(tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian's prometheus package ships it)")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(P.recording_rules(Windows(), interval_s=15)))
    proc = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(Signal)} rules found" in proc.stdout


@pytest.mark.parametrize(("value", "want"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_the_loop_reads_recorded_series_when_told(value: str, want: bool) -> None:
    assert LoopSettings.from_env({"AGENTSCALE_RC_RECORDED_SIGNALS": value}).recorded_signals is want


async def test_recorded_series_read_the_same_values_as_the_queries(tmp_path: Path) -> None:
    workers, pods = fleet()
    exporter = Exporter([[w] for w in workers] + [[p] for p in pods])
    want = expected(workers, pods)
    windows = Windows(stable_s=5, short_s=3)
    async with Counting() as counting:
        with scraped(exporter, tmp_path / "prom", 1.0, rules=P.recording_rules(windows)) as prom:
            reader = PrometheusReader(prom.url, windows, session=counting.session, recorded=True)
            reading = await settled_read(reader, exporter, counting)
    assert counting.requests == ["POST /api/v1/query"] * len(Signal)
    assert set(reader.queries.values()) == {P.recorded(s) for s in Signal}  # plain selectors
    assert not reading.errors
    assert_expected(reading, want)
