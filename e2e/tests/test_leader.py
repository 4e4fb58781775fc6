"""Leader election against a real API server: two electors in one process compete for one Lease.

Exactly one leads; a leader that dies without releasing (its task cancelled, as a crash would) is replaced
within about one lease period, and never before its lease could have expired; a clean stop releases the
Lease, so the other takes over at once.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import kopf
import pytest
from agentscale.kube import KubeClient
from agentscale.resource_controller.leader import LeaderElector, LeaseConfig

pytestmark = pytest.mark.cluster

LEASE = "e2e-leader"


@pytest.fixture
async def kube(kubeconfig: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeClient]:
    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    client = KubeClient.from_connection(info, "agentscale-e2e", limit=8)
    yield client
    await client.close()


class Candidate:
    """One elector with its own stop event and a ``lead`` that records when it started leading."""

    def __init__(self, kube: KubeClient, config: LeaseConfig, name: str) -> None:
        self.elector = LeaderElector(kube, config, identity=f"{name}_{secrets.token_hex(3)}")
        self.stop = asyncio.Event()
        self.leading = asyncio.Event()
        self.led_at: float | None = None
        self.task = asyncio.create_task(self.elector.run(self._lead, self.stop))

    async def _lead(self) -> None:
        self.led_at = asyncio.get_running_loop().time()
        self.leading.set()
        await asyncio.Event().wait()

    async def crash(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)

    async def shut_down(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 30)


async def first_leader(*cands: Candidate) -> tuple[Candidate, Candidate]:
    waits = [asyncio.ensure_future(c.leading.wait()) for c in cands]
    done, pending = await asyncio.wait(waits, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    for w in pending:
        w.cancel()
    assert done, "nobody acquired the lease within 30 s"
    leader = next(c for c in cands if c.leading.is_set())
    return leader, next(c for c in cands if c is not leader)


def lease(kubectl: Any, ns: str) -> dict[str, Any]:
    spec: dict[str, Any] = kubectl.json("-n", ns, "get", "lease", LEASE)["spec"]
    return spec


async def watch_exactly_one(cands: tuple[Candidate, ...], seconds: float) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        assert sum(c.elector.is_leader for c in cands) == 1, [c.elector.is_leader for c in cands]
        await asyncio.sleep(0.1)


async def test_one_leads_and_a_crashed_leader_is_replaced_within_a_lease_period(
    kube: KubeClient, kubectl: Any, namespace: str
) -> None:
    cfg = LeaseConfig(namespace, LEASE, lease_duration_s=3, renew_deadline_s=2.0, retry_period_s=0.5)
    cands = (Candidate(kube, cfg, "a"), Candidate(kube, cfg, "b"))
    try:
        leader, follower = await first_leader(*cands)
        await watch_exactly_one(cands, 3 * cfg.lease_duration_s)  # renewals keep it; the other never leads
        spec = lease(kubectl, namespace)
        assert spec["holderIdentity"] == leader.elector.identity
        assert spec["leaseDurationSeconds"] == 3 and spec["leaseTransitions"] == 0
        assert spec["renewTime"] > spec["acquireTime"]  # renewed since acquired (RFC 3339 sorts as text)

        crashed_at = asyncio.get_running_loop().time()
        await leader.crash()  # no release: the lease must expire
        assert lease(kubectl, namespace)["holderIdentity"] == leader.elector.identity
        await asyncio.wait_for(follower.leading.wait(), 30)
        assert follower.led_at is not None
        took = follower.led_at - crashed_at
        # Not before the lease could have expired (the last renewal was at most a retry period before the
        # crash), and within about one lease period after it (plus jittered retries; generous).
        assert cfg.lease_duration_s - 2 * cfg.retry_period_s <= took <= 3 * cfg.lease_duration_s, took
        spec = lease(kubectl, namespace)
        assert spec["holderIdentity"] == follower.elector.identity and spec["leaseTransitions"] == 1
        assert follower.elector.is_leader
    finally:
        for c in cands:
            await c.crash()


async def test_a_clean_stop_releases_the_lease_at_once(
    kube: KubeClient, kubectl: Any, namespace: str
) -> None:
    # A long lease: a hand-over by expiry would take at least 10 s, by release well under it.
    cfg = LeaseConfig(namespace, LEASE, lease_duration_s=10, renew_deadline_s=6.0, retry_period_s=0.5)
    cands = (Candidate(kube, cfg, "a"), Candidate(kube, cfg, "b"))
    try:
        leader, follower = await first_leader(*cands)
        await watch_exactly_one(cands, 2.0)
        stopped_at = asyncio.get_running_loop().time()
        await leader.shut_down()
        assert not leader.elector.is_leader
        await asyncio.wait_for(follower.leading.wait(), 30)
        assert follower.led_at is not None
        assert follower.led_at - stopped_at < cfg.lease_duration_s, "handed over by expiry, not by release"
        spec = lease(kubectl, namespace)
        assert spec["holderIdentity"] == follower.elector.identity and spec["leaseTransitions"] == 1
        await follower.shut_down()
        assert lease(kubectl, namespace)["holderIdentity"] == ""
    finally:
        for c in cands:
            await c.crash()
