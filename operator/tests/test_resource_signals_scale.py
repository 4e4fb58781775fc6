"""The sensors at scale: 1,000 workflows x 4 steps and a model server each, scraped by a real Prometheus.
A read is still one query per signal; how long it takes is printed (measured, not asserted), for the queries
themselves and for the series the recording rules record (AGENTSCALE_RC_RECORDED_SIGNALS=1), both against the
same Prometheus in the same run (it evaluates the rules every RULE_INTERVAL_S meanwhile). With
AGENTSCALE_RECORD_READ set, the numbers are also written there (bench/controller/read_time.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from agentscale.resource_controller import promql as P
from agentscale.resource_controller.promql import Signal, Windows
from agentscale.resource_controller.signals import PrometheusReader, Reading
from agentscale.resource_controller.snapshot import PartKind
from agentscale_harness.local import wait_until
from prom_fleet import Counting, Exporter, Latency, Pod, TritonPod, Worker, scraped

N_WORKFLOWS, STEPS, TARGETS = 1000, ("ingest", "encode", "rank", "answer"), 10
READS = 5
RULE_INTERVAL_S = 10  # a production cycle is 15 s: the rules are evaluated at least once a cycle
LATENCY = Latency((0.2, 0.6, 0.9, 0.97, 1.0), 0.1)


def _write(path: Path, doc: dict[str, object]) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n")


def fleet() -> list[list[Pod]]:
    """TARGETS scrape targets of 100 workflows each (every series labelled as the pods' would be)."""
    targets: list[list[Pod]] = [[] for _ in range(TARGETS)]
    for k in range(N_WORKFLOWS):
        ns, wf = f"team-{k % 20}", f"wf-{k}"
        pods = targets[k % TARGETS]
        for j, step in enumerate(STEPS):
            model = "enc" if step == "encode" else ""
            pods.append(
                Worker(ns, wf, step, f"{wf}-{step}-0", 1.0 + k % 7, float(j + k % 11), 1.0, LATENCY,
                       model, 2.0, LATENCY if model else None, pod_label_in_series=True)
            )  # fmt: skip
        pods.append(TritonPod(ns, wf, "enc", f"{wf}-enc-0", 2.0, 4.0, 2.0, 1500.0, 4000.0, labelled=True))
    return targets


async def test_one_read_for_4000_steps_and_1000_models_is_one_query_per_signal(tmp_path: Path) -> None:
    exporter = Exporter(fleet())
    want = {PartKind.step: N_WORKFLOWS * len(STEPS), PartKind.model: N_WORKFLOWS}

    async def complete(reader: PrometheusReader) -> bool:
        r = await reader.read()
        return not r.errors and all(len(v.values) == want[s.kind] for s, v in r.results.items())

    windows = Windows(stable_s=8, short_s=4)
    rules = P.recording_rules(windows, interval_s=RULE_INTERVAL_S)
    with scraped(exporter, tmp_path / "prom", interval_s=2.0, rules=rules) as prom:
        async with Counting() as counting:
            direct = PrometheusReader(prom.url, windows, session=counting.session, timeout_s=30)
            recorded = PrometheusReader(
                prom.url, windows, session=counting.session, timeout_s=30, recorded=True
            )
            await wait_until(lambda: complete(direct), 120, 1.0, "every signal of 5,000 parts")
            await wait_until(lambda: complete(recorded), 120, 1.0, "every recorded signal of 5,000 parts")
            readings: dict[str, list[Reading]] = {"queries": [], "recorded": []}
            for _ in range(READS):  # interleaved: both see the same Prometheus
                for name, reader in (("queries", direct), ("recorded", recorded)):
                    counting.requests.clear()
                    readings[name].append(await reader.read())
                    assert counting.requests == ["POST /api/v1/query"] * len(Signal)

    for reading in readings["queries"] + readings["recorded"]:
        assert not reading.errors
        assert len(reading.parts()) == N_WORKFLOWS * (len(STEPS) + 1)
    # the lag is a gauge that never changes here: both ways read exactly the same values
    lags = [
        r.results[Signal.step_queue_lag].values for r in (readings["queries"][-1], readings["recorded"][-1])
    ]
    assert lags[0] == lags[1]
    series = sum(len(pod.lines(1.0)) for pods in exporter.targets for pod in pods)
    medians = {}
    for name, rs in readings.items():
        ms = sorted(r.duration_s * 1000 for r in rs)
        medians[name] = ms[len(ms) // 2]
        slowest = max(rs[-1].results.values(), key=lambda r: r.duration_s)
        print(
            f"\nsignals read at scale ({name}): {N_WORKFLOWS} workflows x {len(STEPS)} steps + {N_WORKFLOWS} "
            f"models ({series} series, {windows.stable_s:g} s windows, 2 s scrapes, rules every "
            f"{RULE_INTERVAL_S} s): {len(Signal)} queries a read, {medians[name]:.0f} ms median of "
            f"{READS} reads (min {ms[0]:.0f}, max {ms[-1]:.0f}); slowest query in the last: {slowest.signal} "
            f"{slowest.duration_s * 1000:.0f} ms"
        )
    print(f"recorded / queries, median read: {medians['recorded'] / medians['queries']:.3f}")
    record = os.environ.get("AGENTSCALE_RECORD_READ")  # bench/controller/read_time.py commits this file
    if record:
        doc = {
            "workflows": N_WORKFLOWS,
            "steps_per_workflow": len(STEPS),
            "models_per_workflow": 1,
            "series": series,
            "queries_per_read": len(Signal),
            "reads": READS,
            "read_ms": {
                name: sorted(round(r.duration_s * 1000, 1) for r in rs) for name, rs in readings.items()
            },
            "median_ms": {name: round(v, 1) for name, v in medians.items()},
            "recorded_over_queries": round(medians["recorded"] / medians["queries"], 3),
        }
        _write(Path(record), doc)
