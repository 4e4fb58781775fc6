"""Right-sizing's policy (resource_controller/rightsize.py): pure, table-driven."""

from __future__ import annotations

import itertools

import pytest
import yaml
from agentscale.api.models import Rightsizing
from agentscale.api.validation import InvalidSpec, parse_spec
from agentscale.resource_controller.rightsize import (
    MIB,
    PodView,
    Recommendation,
    Usage,
    plan_part,
    resize_for,
)
from conftest import minimal_spec
from tests_paths import CRD_FILE

WINDOW = 3600
S = Rightsizing(enabled=True, percentile=95, margin=0.2, windowSeconds=WINDOW, minCpu="50m", minMemory="64Mi")


def pod(
    name: str = "p0",
    cpu: float | None = 0.18,
    mem: float | None = 250 * MIB,
    observed: float = WINDOW,
    requests: dict[str, float] | None = None,
    limits: dict[str, float] | None = None,
    resizing: bool = False,
) -> PodView:
    usage = Usage(cpu, mem, observed, "process") if cpu is not None and mem is not None else None
    return PodView(
        name,
        f"uid-{name}",
        "worker",
        requests if requests is not None else {"cpu": 0.5, "memory": 512 * MIB},
        limits if limits is not None else {"memory": 1024 * MIB},
        usage,
        resizing,
    )


def plan(pods, current=None, now=10_000.0, threshold=0.1, recently=()):
    return plan_part("step/a", S, pods, current, now, threshold, 0.5, recently)


def test_first_recommendation_is_percentile_and_peak_plus_margin_and_resizes_every_pod():
    p = plan([pod("p0"), pod("p1", cpu=0.1, mem=200 * MIB)])
    assert p.changed and p.recommendation is not None
    rec = p.recommendation
    assert rec.cpu == pytest.approx(0.216)  # max over pods: 180m x 1.2
    assert rec.memory == 300 * MIB  # 250Mi x 1.2
    assert rec.reason == "cpu p95 180m x1.2 = 216m; memory peak 250Mi x1.2 = 300Mi; 500m/512Mi -> 216m/300Mi"
    assert [(r.pod, r.requests) for r in p.resizes] == [
        ("p0", {"cpu": "216m", "memory": "300Mi"}),
        ("p1", {"cpu": "216m", "memory": "300Mi"}),
    ]


@pytest.mark.parametrize(
    ("cpu", "mem", "want_cpu", "want_mem"),
    [
        (0.001, 1 * MIB, "50m", "64Mi"),  # floors
        (0.0001, 100 * MIB, "50m", "120Mi"),
        (2.0, 10 * MIB, "2400m", "64Mi"),
    ],
)
def test_floors(cpu, mem, want_cpu, want_mem):
    p = plan([pod(cpu=cpu, mem=mem, limits={})])
    assert p.resizes[0].requests == {"cpu": want_cpu, "memory": want_mem}


def test_the_reason_names_the_floor_when_the_floor_set_the_request():
    # seen on the real node: an idle worker at 4m read "cpu p95 4m x1.2 = 50m", a product that is wrong
    p = plan([pod(cpu=0.004, mem=88 * MIB, limits={})])
    assert p.recommendation is not None
    assert p.recommendation.reason == (
        "cpu p95 4m x1.2 under the floor 50m; memory peak 88Mi x1.2 = 106Mi; 500m/512Mi -> 50m/106Mi"
    )


def test_no_decision_without_enough_data():
    p = plan([pod(observed=WINDOW * 0.4), pod("p1", cpu=None, mem=None)])
    assert p.recommendation is None and not p.resizes
    assert "waiting for usage" in p.note and "1800 s" in p.note


def test_only_pods_observed_long_enough_count():
    p = plan([pod("old", cpu=0.1, mem=100 * MIB), pod("new", cpu=1.0, mem=900 * MIB, observed=60)])
    assert p.recommendation is not None and p.recommendation.cpu == pytest.approx(0.12)


def test_memory_request_capped_at_limit_and_gpu_never_touched():
    big = pod(
        mem=1000 * MIB,
        requests={"cpu": 0.5, "memory": 512 * MIB},
        limits={"memory": 1024 * MIB},
    )
    p = plan([big])
    r = p.resizes[0]
    assert set(r.requests) <= {"cpu", "memory"}
    assert r.requests["memory"] == str(1024 * MIB)  # 1200Mi wanted, capped at the 1Gi limit
    assert "capped at its limit" in r.note


def test_guaranteed_pods_are_left_alone():
    g = pod(requests={"cpu": 1.0, "memory": 512 * MIB}, limits={"cpu": 1.0, "memory": 512 * MIB})
    p = plan([g])
    assert p.changed and not p.resizes


def test_resizing_and_recently_resized_pods_are_skipped():
    p = plan([pod("a", resizing=True), pod("b"), pod("c")], recently={"uid-c"})
    assert [r.pod for r in p.resizes] == ["b"]


def test_pods_already_at_the_recommendation_are_not_resized():
    rec = Recommendation(0.216, 300 * MIB, since=0.0)
    at = pod(requests={"cpu": 0.216, "memory": 300 * MIB})
    assert resize_for(at, rec) is None
    assert resize_for(pod(), rec) is not None


def test_held_within_window_but_new_pods_still_follow_the_recommendation():
    current = Recommendation(0.216, 300 * MIB, since=9_000.0)
    fresh = pod("new", cpu=0.5, mem=600 * MIB)  # from the template: spec requests
    p = plan([fresh], current=current, now=10_000.0)
    assert not p.changed and "held" in p.note
    assert p.recommendation == current
    assert p.resizes[0].requests == {"cpu": "216m", "memory": "300Mi"}


@pytest.mark.parametrize(
    ("cpu", "changed"),
    [(0.185, False), (0.17, False), (0.25, True), (0.1, True)],
)
def test_threshold_either_way(cpu, changed):
    current = Recommendation(0.216, 300 * MIB, since=0.0)
    at = {"cpu": 0.216, "memory": 300 * MIB}
    p = plan([pod(cpu=cpu, mem=250 * MIB, requests=at)], current=current)
    assert p.changed is changed


def test_memory_below_peak_plus_margin_is_raised_whatever_the_threshold():
    current = Recommendation(0.216, 300 * MIB, since=0.0)
    at = {"cpu": 0.216, "memory": 300 * MIB}
    p = plan([pod(cpu=0.18, mem=260 * MIB, requests=at)], current=current)  # 312Mi: +4%
    assert p.changed and p.recommendation is not None
    assert p.recommendation.memory == 312 * MIB and p.recommendation.cpu == pytest.approx(0.216)


def test_oscillating_usage_changes_at_most_once_per_window():
    """Usage flips between low and high every 10 minutes; the controller rounds every minute for 6 hours."""
    current = None
    requests = {"cpu": 0.5, "memory": 512 * MIB}
    changes = []
    for minute in range(0, 360):
        now = 100_000.0 + minute * 60
        high = (minute // 10) % 2 == 1
        cpu = 0.4 if high else 0.1
        p = plan([pod(cpu=cpu, mem=250 * MIB, requests=requests)], current=current, now=now)
        if p.changed:
            changes.append(now)
        current = p.recommendation
        if p.resizes:
            requests = {"cpu": current.cpu, "memory": current.memory}
    assert changes
    assert all(b - a >= WINDOW for a, b in itertools.pairwise(changes))
    assert len(changes) <= 360 * 60 // WINDOW + 1


def test_small_oscillation_within_threshold_never_changes():
    current = Recommendation(0.216, 300 * MIB, since=0.0)
    at = {"cpu": 0.216, "memory": 300 * MIB}
    for i in range(200):
        cpu = 0.18 * (1.05 if i % 2 else 0.95)
        p = plan([pod(cpu=cpu, mem=240 * MIB, requests=at)], current=current, now=10_000.0 + i * 3600)
        assert not p.changed and not p.resizes


# -- the API: spec.steps[]/models[].rightsizing ------------------------------------------------------------


def test_rightsizing_is_off_by_default_and_the_crd_carries_its_rules() -> None:
    spec = parse_spec(minimal_spec())
    assert not any(s.rightsizing.enabled for s in spec.steps)
    assert not any(m.rightsizing.enabled for m in spec.models)
    crd = yaml.safe_load(CRD_FILE.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    step = schema["spec"]["properties"]["steps"]["items"]
    assert step["properties"]["rightsizing"]["properties"]["enabled"]["default"] is False
    assert any("rightsizing" in r["rule"] for r in step["x-kubernetes-validations"])
    assert "rightsizing" in schema["status"]["properties"]


@pytest.mark.parametrize(
    ("where", "rs", "scaling", "words"),
    [
        ("steps", {"enabled": True}, {"mode": "hpa"}, "mode hpa"),
        ("models", {"enabled": True}, {"mode": "hpa"}, "mode hpa"),
        ("steps", {"minCpu": "0"}, None, "minCpu must be above zero"),
        ("steps", {"minMemory": 0}, None, "minMemory must be above zero"),
        ("steps", {"percentile": 20}, None, "percentile"),
        ("steps", {"windowSeconds": 5}, None, "windowSeconds"),
    ],
)
def test_bad_rightsizing_is_refused_naming_the_field(where, rs, scaling, words) -> None:
    spec = minimal_spec()
    part = spec[where][0]
    part["rightsizing"] = rs
    if scaling:
        part["scaling"] = scaling
    with pytest.raises(InvalidSpec) as e:
        parse_spec(spec)
    assert words in str(e.value.problems)


def test_rightsizing_in_queue_mode_is_accepted() -> None:
    spec = minimal_spec()
    spec["steps"][0].update(rightsizing={"enabled": True, "minCpu": "10m"}, scaling={"mode": "queue"})
    s = parse_spec(spec).steps[0]
    assert s.rightsizing.enabled and s.rightsizing.floors() == (pytest.approx(0.01), 64 * MIB)


def test_the_reason_says_which_resource_was_kept_within_the_threshold():
    current = Recommendation(0.216, 300 * MIB, since=0.0)
    at = {"cpu": 0.216, "memory": 300 * MIB}
    p = plan([pod(cpu=0.17, mem=400 * MIB, requests=at)], current=current)
    assert p.changed and p.recommendation is not None
    assert p.recommendation.reason == (
        "cpu p95 170m x1.2 = 204m (within 10% of 216m: kept); memory peak 400Mi x1.2 = 480Mi; "
        "216m/300Mi -> 216m/480Mi"
    )
