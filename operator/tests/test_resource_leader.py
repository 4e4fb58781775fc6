"""Leader election on a fake clock against a fake Lease store (on a real API server: e2e/test_leader.py)."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from agentscale.kube import ApiError, object_path
from agentscale.resource_controller.leader import (
    Attempt,
    LeaderElector,
    LeaderRecord,
    LeaseConfig,
    micro_time,
    new_identity,
    operator_namespace,
)

NS, NAME, ME, OTHER = "ops", "rc", "me_1", "other_2"
CFG = LeaseConfig(namespace=NS, name=NAME)  # client-go's defaults: 15 s, 10 s, 2 s


class FakeClock:
    """Fake time: ``sleep`` advances it (and yields once)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def monotonic(self) -> float:
        return self.t

    def now(self) -> dt.datetime:
        return dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self.t)

    async def sleep(self, seconds: float) -> None:
        self.t += max(seconds, 0.0)
        await asyncio.sleep(0)


class FakeLeases:
    """An API server's Lease storage in this unit test only: resourceVersion checks, 409 on conflicts."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.fail: Exception | None = None
        self.before_write: Callable[[], None] | None = None  # runs once, between our read and our write
        self.written_at: float | None = None

    def put(
        self,
        holder: str,
        transitions: int = 3,
        renew: str = "2020-01-01T00:00:00.000000Z",
        duration: int = 15,
    ) -> None:
        """Someone else writes the Lease."""
        self.rv += 1
        rec = LeaderRecord(holder, duration, renew, renew, transitions)
        meta = {"name": NAME, "namespace": NS, "resourceVersion": str(self.rv)}
        self.lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": rec.spec(),
        }

    @property
    def record(self) -> LeaderRecord:
        assert self.lease is not None
        return LeaderRecord.of(self.lease)

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert (api_version, kind, namespace, name) == ("coordination.k8s.io/v1", "Lease", NS, NAME)
        await asyncio.sleep(0)
        if self.fail:
            raise self.fail
        return copy.deepcopy(self.lease)

    def _hook(self) -> None:
        if self.before_write:
            hook, self.before_write = self.before_write, None
            hook()

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._hook()
        if self.lease is not None:
            raise ApiError(409, {"message": "already exists"}, "create Lease")
        self.rv += 1
        self.lease = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        self.written_at = self.clock.t
        return copy.deepcopy(self.lease)

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._hook()
        if self.fail:
            raise self.fail
        assert self.lease is not None
        if obj["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            raise ApiError(409, {"message": "the object has been modified"}, "replace Lease")
        self.rv += 1
        self.lease = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
        self.written_at = self.clock.t
        return copy.deepcopy(self.lease)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> FakeLeases:
    return FakeLeases(clock)


def elector(store: FakeLeases, clock: FakeClock, identity: str = ME) -> LeaderElector:
    return LeaderElector(store, CFG, identity=identity, clock=clock, rng=random.Random(7))


# ---------------------------------------------------------------------------------------- one attempt

# (case, Lease before (None: absent; else its holder), the elector looked once at t=0, seconds later,
#  the holder renewed in between, expected attempt, expected holder, expected transitions)
ATTEMPTS = [
    ("absent: created", None, False, 0, False, Attempt.ok, ME, 0),
    ("free: taken", "", False, 0, False, Attempt.ok, ME, 4),
    ("foreign, first look, old renewTime: held", OTHER, False, 0, False, Attempt.held, OTHER, 3),
    ("foreign, unchanged 14 s < 15 s: held", OTHER, True, 14, False, Attempt.held, OTHER, 3),
    ("foreign, unchanged 16 s > 15 s: taken over", OTHER, True, 16, False, Attempt.ok, ME, 4),
    ("foreign, renewed meanwhile: held", OTHER, True, 16, True, Attempt.held, OTHER, 3),
    ("ours: renewed", ME, False, 5, False, Attempt.ok, ME, 3),
]


@pytest.mark.parametrize(
    ("before", "looked", "later", "renewed", "attempt", "holder", "transitions"),
    [c[1:] for c in ATTEMPTS],
    ids=[c[0] for c in ATTEMPTS],
)
async def test_try_acquire_or_renew(
    clock: FakeClock,
    store: FakeLeases,
    before: str | None,
    looked: bool,
    later: float,
    renewed: bool,
    attempt: Attempt,
    holder: str,
    transitions: int,
) -> None:
    if before is not None:
        store.put(before)
    e = elector(store, clock)
    if looked:
        assert await e.try_acquire_or_renew() is Attempt.held
    clock.t += later / 2
    if renewed:
        store.put(OTHER, renew=micro_time(clock.now()))
    clock.t += later / 2
    assert await e.try_acquire_or_renew() is attempt
    assert store.record.holder == holder
    assert store.record.transitions == transitions
    if attempt is Attempt.ok:
        assert store.record.renew_time == micro_time(clock.now())
        assert store.record.lease_duration_s == 15
        taken = before != ME
        acquired = store.record.acquire_time
        assert (acquired == micro_time(clock.now())) == taken, acquired


async def test_a_conflicting_write_loses_the_attempt(clock: FakeClock, store: FakeLeases) -> None:
    store.put("")
    e = elector(store, clock)
    store.before_write = lambda: store.put(OTHER)  # someone else wins between our read and our write
    assert await e._attempt(5.0) is Attempt.failed
    assert store.record.holder == OTHER
    assert await e.try_acquire_or_renew() is Attempt.held


async def test_release_clears_the_holder_and_keeps_the_count(clock: FakeClock, store: FakeLeases) -> None:
    e = elector(store, clock)
    assert await e.try_acquire_or_renew() is Attempt.ok
    assert await e.release()
    assert store.record.holder == "" and store.record.transitions == 0
    # A successor takes it at once (no holder: nothing to wait for).
    assert await elector(store, clock, OTHER).try_acquire_or_renew() is Attempt.ok
    assert store.record.holder == OTHER and store.record.transitions == 1
    assert not await e.release()  # not ours any more: untouched
    assert store.record.holder == OTHER


# ---------------------------------------------------------------------------------------- the loop


class Leading:
    """A ``lead`` callback that records when it started and when it was cancelled."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.cancelled_at: float | None = None

    async def __call__(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled_at = self.clock.t
            self.cancelled.set()
            raise


async def start(e: LeaderElector, lead: Leading, stop: asyncio.Event) -> asyncio.Task[None]:
    task = asyncio.create_task(e.run(lead, stop))
    await asyncio.wait_for(lead.started.wait(), 5)
    return task


async def test_leads_then_a_clean_stop_releases(clock: FakeClock, store: FakeLeases) -> None:
    e, lead, stop = elector(store, clock), Leading(clock), asyncio.Event()
    task = await start(e, lead, stop)
    assert e.is_leader and store.record.holder == ME
    stop.set()
    await asyncio.wait_for(task, 5)
    assert lead.cancelled.is_set() and not e.is_leader
    assert store.record.holder == ""


async def test_cancel_is_a_crash_and_releases_nothing(clock: FakeClock, store: FakeLeases) -> None:
    e, lead = elector(store, clock), Leading(clock)
    task = await start(e, lead, asyncio.Event())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert lead.cancelled.is_set()
    assert store.record.holder == ME  # it expires instead


async def test_renew_failing_past_the_deadline_gives_up_before_the_lease_expires(
    clock: FakeClock, store: FakeLeases
) -> None:
    e, lead, stop = elector(store, clock), Leading(clock), asyncio.Event()
    task = await start(e, lead, stop)
    for _ in range(20):  # some renewals
        await asyncio.sleep(0)
    store.fail = ApiError(503, {"message": "etcd unavailable"}, "get Lease")
    failed_at = clock.t
    await asyncio.wait_for(lead.cancelled.wait(), 5)
    assert not e.is_leader
    assert lead.cancelled_at is not None and store.written_at is not None
    gave_up_after = lead.cancelled_at - failed_at
    assert (
        CFG.renew_deadline_s - CFG.retry_period_s
        <= gave_up_after
        <= CFG.renew_deadline_s + CFG.retry_period_s
    )
    # Leadership ended before another candidate could see the lease expire.
    assert lead.cancelled_at < store.written_at + CFG.lease_duration_s
    # It keeps competing, and leads again when the API server is back.
    store.fail = None
    lead.started.clear()
    await asyncio.wait_for(lead.started.wait(), 5)
    assert e.is_leader and store.record.holder == ME
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_another_holder_ends_leadership_at_once(clock: FakeClock, store: FakeLeases) -> None:
    e, lead, stop = elector(store, clock), Leading(clock), asyncio.Event()
    task = await start(e, lead, stop)
    store.before_write = lambda: store.put(OTHER)  # our next renewal conflicts: OTHER took it
    taken_at = clock.t
    await asyncio.wait_for(lead.cancelled.wait(), 5)
    assert not e.is_leader and store.record.holder == OTHER
    assert lead.cancelled_at is not None and lead.cancelled_at - taken_at <= 2 * CFG.retry_period_s
    stop.set()
    await asyncio.wait_for(task, 5)
    assert store.record.holder == OTHER  # a stop releases only what is ours


async def test_a_leading_task_that_dies_gives_the_lease_up(clock: FakeClock, store: FakeLeases) -> None:
    runs: list[float] = []
    stop = asyncio.Event()

    async def crashing() -> None:
        runs.append(clock.t)
        if len(runs) >= 2:
            stop.set()
            return
        raise RuntimeError("bug")

    await asyncio.wait_for(elector(store, clock).run(crashing, stop), 5)
    assert len(runs) == 2
    assert runs[1] - runs[0] >= 2 * CFG.retry_period_s  # a renew period, then a jittered wait: no tight loop
    assert store.record.holder == "" and store.record.transitions == 1  # released, then acquired again


# ---------------------------------------------------------------------------------------- settings


def test_jitter_stays_within_client_go_bounds(clock: FakeClock, store: FakeLeases) -> None:
    e = elector(store, clock)
    waits = [e._jittered() for _ in range(200)]
    assert all(2.0 <= w < 2.0 * 2.2 for w in waits)
    assert max(waits) - min(waits) > 1.0


def test_settings_from_env_and_their_checks(tmp_path: Path) -> None:
    env = {
        "POD_NAMESPACE": "agentscale-system",
        "AGENTSCALE_RC_LEASE_NAME": "x",
        "AGENTSCALE_RC_LEASE_DURATION_SECONDS": "3",
        "AGENTSCALE_RC_RENEW_DEADLINE_SECONDS": "2",
        "AGENTSCALE_RC_RETRY_PERIOD_SECONDS": "0.5",
    }
    assert LeaseConfig.from_env(env) == LeaseConfig("agentscale-system", "x", 3, 2.0, 0.5)
    with pytest.raises(ValueError, match="lease duration > renew deadline"):
        LeaseConfig(lease_duration_s=10, renew_deadline_s=10.0)
    with pytest.raises(ValueError, match="jitter x retry period"):
        LeaseConfig(renew_deadline_s=2.0, retry_period_s=2.0)
    missing = tmp_path / "none"
    assert operator_namespace({"AGENTSCALE_NAMESPACE": "a", "POD_NAMESPACE": "b"}, missing) == "a"
    assert operator_namespace({}, missing) == "default"
    sa = tmp_path / "namespace"
    sa.write_text("in-pod\n")
    assert operator_namespace({}, sa) == "in-pod"
    ident = new_identity({"HOSTNAME": "agentscale-7d9f-abc"})
    assert ident.startswith("agentscale-7d9f-abc_") and ident != new_identity(
        {"HOSTNAME": "agentscale-7d9f-abc"}
    )
    assert object_path("coordination.k8s.io/v1", "Lease", NS, NAME) == (
        f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{NAME}"
    )
