"""The controller benchmark's simulator (bench/controller): its queue against M/M/c, the oracle as a floor,
the CSV trace format, the HPA and KEDA formulas, and the controller wired to the operator's own decide()."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from agentscale.api.models import ScalingMode
from agentscale.resource_controller.queueing import erlang_c, mmc_quantile

from bench.controller import oracle, policies, traces
from bench.controller.sim import PlannedFleet, PolicyFleet, Scenario, histogram_quantile, simulate


def poisson(rate: float, seconds: int, seed: int = 3) -> traces.Trace:
    return traces.from_rates("test", np.full(seconds, rate), seed, "test")


# -- the queue ------------------------------------------------------------------------------------------
def test_fixed_servers_with_exponential_service_match_mmc() -> None:
    lam, service_s, c = 300.0, 0.010, 4  # offered load 3, utilization 75%
    trace = poisson(lam, 600)
    svc = np.random.default_rng(5).exponential(service_s, trace.requests)
    fleet = PlannedFleet(np.full(trace.duration_s + 200, c))
    run = simulate(trace.arrivals, svc, trace.duration_s, fleet, Scenario(drain_s=60))
    wait = run.latency - svc
    a, mu = lam * service_s, 1.0 / service_s
    p_wait = erlang_c(c, a)  # 0.509
    assert (wait > 1e-12).mean() == pytest.approx(p_wait, rel=0.05)
    assert wait.mean() == pytest.approx(p_wait / (c * mu - lam), rel=0.08)  # Wq = C / (c mu - lam)
    assert np.quantile(run.latency, 0.95) == pytest.approx(mmc_quantile(c, lam, service_s), rel=0.05)
    assert run.billed.sum() == c * trace.duration_s and run.scale_events == 0


def test_too_few_servers_leave_a_backlog_that_is_never_dropped() -> None:
    trace = poisson(200.0, 60)
    svc = np.full(trace.requests, 0.010)  # 2 servers x 100/s each: exactly saturated at best
    run = simulate(trace.arrivals, svc, 60, PlannedFleet(np.full(400, 1)), Scenario(drain_s=300))
    assert np.isfinite(run.latency).all()  # all served after the trace, while draining
    assert run.attainment(0.1) < 0.2  # one server, twice the load: almost everything late


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = (0.01, 0.025, 0.05)
    cumulative = np.array([0.0, 50.0, 100.0, 100.0])  # 50 in (0.01, 0.025], 50 in (0.025, 0.05]
    assert histogram_quantile(0.5, cumulative, bounds) == pytest.approx(0.025)
    assert histogram_quantile(0.75, cumulative, bounds) == pytest.approx(0.0375)
    assert histogram_quantile(0.99, np.array([0.0, 0.0, 0.0, 10.0]), bounds) == 0.05  # +Inf: top bound
    assert histogram_quantile(0.5, np.zeros(4), bounds) is None


def test_the_sensors_see_the_offered_rate() -> None:
    scenario = Scenario()
    trace = poisson(400.0, 300)
    svc = np.full(trace.requests, 0.008)
    seen: list[float | None] = []

    class Probe:
        name, period_s = "probe", 60

        def decide(self, now: int, current: int, ready: int, view: object) -> int:
            seen.append(view.arrival_rps(now, 60.0))  # type: ignore[attr-defined]
            return current

    simulate(trace.arrivals, svc, trace.duration_s, PolicyFleet(Probe(), 5, scenario), scenario)
    during, after = seen[:5], seen[5]  # syncs at 60 .. 300 s, then 360 s: a minute after the last arrival
    assert all(r is not None and r == pytest.approx(400.0, rel=0.05) for r in during)
    assert after == 0.0


# -- the oracle -----------------------------------------------------------------------------------------
def test_oracle_billing_starts_each_replica_one_startup_ahead() -> None:
    need = np.array([1, 1, 1, 5, 5, 1, 1, 1, 3, 1])
    assert oracle.billed(need, 2.0).tolist() == [1, 5, 5, 5, 5, 1, 3, 3, 3, 1]
    assert oracle.billed(need, 0.0).tolist() == need.tolist()


def test_oracle_is_the_floor_and_meets_the_target() -> None:
    scenario = Scenario(startup_s=10.0, drain_s=60)
    rates = np.concatenate([np.full(120, 100.0), np.full(60, 800.0), np.full(120, 100.0)])
    trace = traces.from_rates("mini-flash", rates, seed=2, description="test")
    svc = np.random.default_rng(4).lognormal(math.log(0.008), 0.23, trace.requests)
    need = oracle.need(trace.arrivals, svc, trace.duration_s, scenario)
    paid = oracle.billed(need, scenario.startup_s)
    best = simulate(trace.arrivals, svc, trace.duration_s, PlannedFleet(need, paid), scenario)
    assert best.attainment(scenario.slo_s) >= 0.99
    # never fewer than the offered load needs, and one fewer in the busiest second is too few
    peak = int(np.argmax(need[: trace.duration_s]))
    assert need[peak] >= math.ceil(800.0 * 0.008)
    fewer = need.copy()
    fewer[peak - 5 : peak + 5] -= 1
    worse = simulate(trace.arrivals, svc, trace.duration_s, PlannedFleet(fewer), scenario)
    assert worse.latency.max() > best.latency.max()
    for make in (
        lambda: policies.Controller(ScalingMode.queue, scenario),
        lambda: policies.Controller(ScalingMode.slo, scenario),
        lambda: policies.Hpa(scenario),
        lambda: policies.Keda(scenario),
    ):
        run = simulate(trace.arrivals, svc, trace.duration_s, PolicyFleet(make(), 2, scenario), scenario)
        assert best.billed.sum() <= run.billed.sum()


def test_controller_runs_the_operators_decide_and_scales_up_within_a_cycle_of_a_crowd() -> None:
    scenario = Scenario(startup_s=10.0)
    rates = np.concatenate([np.full(300, 100.0), np.full(120, 1000.0)])
    trace = traces.from_rates("crowd", rates, seed=1, description="test")
    svc = np.full(trace.requests, 0.008)
    ctl = policies.Controller(ScalingMode.queue, scenario)
    simulate(trace.arrivals, svc, trace.duration_s, PolicyFleet(ctl, 2, scenario), scenario)
    ups = [(t, a, b) for t, a, b, _ in ctl.changes if b > a and t > 300]
    assert ups and 300 < ups[0][0] <= 300 + ctl.period_s
    assert ups[0][2] >= math.ceil(1000 * 0.008 / 0.7)  # enough for the crowd at 70% busy, at once
    cycles = range(ctl.period_s, trace.duration_s + scenario.drain_s, ctl.period_s)
    assert sum(ctl.rules.values()) == len(cycles)  # decide() ran once per cycle


# -- the HPA and KEDA -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("ready", "unready", "ratio", "want"),
    [
        (4, 0, 1.05, 4),  # within the 10% tolerance
        (4, 0, 0.91, 4),
        (4, 0, 1.5, 6),  # ceil(4 x 1.5)
        (4, 0, 0.5, 2),
        (2, 2, 1.5, 4),  # unready at 0%: 2 x 1.5 / 4 = 0.75, not a scale-up: hold
        (2, 1, 3.0, 6),  # 2 x 3 / 3 = 2.0 -> ceil(3 x 2) = 6
        (0, 3, 2.0, 3),  # no ready pod, no metric: hold
        (4, 0, None, 4),
    ],
)
def test_hpa_replica_calculation(ready: int, unready: int, ratio: float | None, want: int) -> None:
    assert policies.hpa_recommend(ready, unready, ratio) == want


def test_hpa_behavior_stabilizes_down_and_limits_up() -> None:
    history: list[tuple[float, int]] = []
    assert policies.hpa_normalize(10, 10, history, 0.0, 1, 100) == 10
    assert policies.hpa_normalize(10, 4, history, 100.0, 1, 100) == 10  # 10 seen within 300 s
    assert policies.hpa_normalize(10, 4, history, 301.0, 1, 100) == 4  # now the window's highest is 4
    assert policies.hpa_normalize(2, 20, [], 0.0, 1, 100) == 6  # max(+4 pods, +100%) per period
    assert policies.hpa_normalize(10, 50, [], 0.0, 1, 100) == 20
    assert policies.hpa_normalize(10, 50, [], 0.0, 1, 15) == 15  # maxReplicas


def test_keda_formula_cooldown_and_activation() -> None:
    assert policies.keda_recommend(25, 10, 1) == 3  # ceil(queueLength / target)
    assert policies.keda_recommend(31, 10, 3) == 3  # within the HPA's tolerance of 3
    assert policies.keda_recommend(0, 10, 3) == 0
    k = policies.Keda(Scenario(), polled=0.0, last_active=0.0)
    assert policies.keda_step(k, 299.0, 2, 0, 10) >= 1  # cooldown not over
    assert policies.keda_step(k, 300.0, 2, 0, 10) == 0  # 300 s without messages, minReplicaCount 0
    assert policies.keda_step(k, 315.0, 0, 0, 10) == 0
    k.polled = 3.0
    assert policies.keda_step(k, 330.0, 0, 0, 10) == 1  # activation at the poll that sees a message
    assert policies.keda_step(k, 330.0, 2, 1, 10) == 3  # minReplicaCount 1: never zero, ceil(3 / 1)


# -- traces ---------------------------------------------------------------------------------------------
def test_generated_traces_are_seeded_and_shaped() -> None:
    a, b = traces.generate("bursty", seed=4), traces.generate("bursty", seed=4)
    assert np.array_equal(a.arrivals, b.arrivals)
    assert not np.array_equal(a.arrivals, traces.generate("bursty", seed=5).arrivals)
    flash = traces.generate("flash-crowd").rate_per_second()
    before, after = flash[500:600].mean(), flash[615:700].mean()
    assert after / before == pytest.approx(10.0, rel=0.05)
    assert flash[611] > 8 * before  # 10x within 10 s
    with pytest.raises(ValueError, match="unknown trace 'nope'"):
        traces.generate("nope")


def test_csv_round_trip_and_shift(tmp_path: Path) -> None:
    trace = traces.generate("steady")
    path = tmp_path / "steady.csv"
    traces.save_csv(trace, path)
    back = traces.load_csv(path)
    assert back.requests == trace.requests and back.duration_s == trace.duration_s
    assert np.allclose(back.arrivals, trace.arrivals - math.floor(trace.arrivals[0]), atol=1e-6)
    raw = tmp_path / "raw.csv"
    raw.write_text("1000.5\n1000.25\n\n1002.0\n")  # no header, unsorted, a blank line
    got = traces.load_csv(raw)
    assert got.arrivals.tolist() == [0.25, 0.5, 2.0] and got.duration_s == 3


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("t\n1\nabc\n", r"bad.csv:3: 'abc' is not a number of seconds"),
        ("1,2\n", r"bad.csv:1: expected one column"),
        ("1\n-2\n", r"bad.csv:2: timestamps must be finite and >= 0"),
        ("t_s\n", r"bad.csv: no arrival timestamps"),
        ("1\ninf\n", r"bad.csv:2: timestamps must be finite"),
    ],
)
def test_csv_errors_name_the_line(tmp_path: Path, text: str, error: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=error):
        traces.load_csv(path)


def test_decide_time_bench_runs_and_exercises_scaling() -> None:
    """The decide() benchmark in CI size, so it cannot rot: its fleet parses, every cycle decides every part,
    and the signals it builds make some parts scale (a fleet at rest would time only the hold path)."""
    from bench.controller import decide_time

    res = decide_time.run(20, cycles=2)
    assert res["workflows"] == 20 and len(res["cycles_ms"]) == 2
    assert all(c > 0 for c in res["changes_per_cycle"]), res
