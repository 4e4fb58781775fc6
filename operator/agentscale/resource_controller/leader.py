"""Leader election on a ``coordination.k8s.io/v1`` Lease of our own, as client-go's leaderelection does it.

Why our own: kopf peering is not leader election (replicas of equal priority all pause, and a task started
at startup is not paused at all), and both of the operator's controllers run as such tasks. One elector
(one Lease) leads the whole replica: the resource controller runs its cycles as ``lead()``, the workflow
controller listens (:meth:`LeaderElector.add_listener`, client-go's OnStartedLeading/OnStoppedLeading) and
gates its writes on :attr:`LeaderElector.is_leader` (``leadership.py`` says why one Lease).

- The Lease's spec is the record: ``holderIdentity``, ``leaseDurationSeconds``, ``acquireTime``,
  ``renewTime``, ``leaseTransitions``.
- Acquire: try at once, then every retry period (jittered, client-go's factor 1.2). Create the Lease when it
  is absent; take it when it has no holder, or when its record has not changed for ``leaseDurationSeconds``
  as *this process's* clock measured it (client-go's observedTime rule: the holder's timestamps are never
  compared with our clock, so clock skew cannot hand the lease to two holders).
- Renew every retry period. A renew round that has not succeeded within the renew deadline gives leadership
  up (the leading work is cancelled first); since renew deadline < lease duration, that happens before
  anyone else may take over. Seeing another holder ends leadership at once.
- Every write carries the resourceVersion read: a 409 conflict means someone else wrote first; that attempt
  lost.
- Listeners hear a term start right after the lease is won and its end as soon as it is lost, after
  ``is_leader`` has turned False.
- A clean stop (the ``stop`` event) releases the lease (``holderIdentity`` cleared), so a successor takes
  over at once. Cancelling :meth:`LeaderElector.run` is a crash as far as the lease is concerned: nothing is
  released and the lease expires after its duration.

The clock and the random source are injected (unit tests run on fake time against a fake Lease store).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
import logging
import os
import random
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from agentscale import kinds
from agentscale.kube import ApiError

log = logging.getLogger("agentscale.resource_controller.leader")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_LEASE_NAME = "agentscale-resource-controller"


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def now(self) -> dt.datetime: ...
    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class LeaseApi(Protocol):
    """What the elector needs of the API server (``kube.KubeClient`` has it)."""

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]: ...


def operator_namespace(env: Mapping[str, str] = os.environ, sa_file: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """Where the Lease lives: $AGENTSCALE_NAMESPACE, else $POD_NAMESPACE, else the pod's own namespace (its
    service account's namespace file), else ``default`` (a local process, as in the e2e suite)."""
    for var in ("AGENTSCALE_NAMESPACE", "POD_NAMESPACE"):
        if env.get(var):
            return env[var]
    try:
        return sa_file.read_text().strip() or "default"
    except OSError:
        return "default"


def new_identity(env: Mapping[str, str] = os.environ) -> str:
    """The pod's name ($POD_NAME from the downward API, else $HOSTNAME, which a pod's name also sets unless
    its spec names a hostname) plus ``_`` and a random suffix: a container restarted in the same pod is a new
    candidate and waits for its predecessor's lease to expire instead of renewing a term it never held."""
    name = env.get("POD_NAME") or env.get("HOSTNAME") or socket.gethostname()
    return f"{name}_{secrets.token_hex(4)}"


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str = "default"
    name: str = DEFAULT_LEASE_NAME
    lease_duration_s: int = 15
    """How long a follower waits, after the record last changed, before taking the lease (client-go: 15 s)."""
    renew_deadline_s: float = 10.0
    """The leader gives up when a renew round has not succeeded for this long (client-go: 10 s)."""
    retry_period_s: float = 2.0
    """Between attempts to acquire or renew (client-go: 2 s)."""
    jitter: float = 1.2
    """Acquire attempts wait retry_period x (1 + jitter x U[0, 1)) (client-go's JitterFactor)."""

    def __post_init__(self) -> None:
        if not self.lease_duration_s > self.renew_deadline_s > self.jitter * self.retry_period_s > 0:
            raise ValueError(
                "lease settings need lease duration > renew deadline > jitter x retry period > 0, got "
                f"{self.lease_duration_s} s, {self.renew_deadline_s} s, "
                f"{self.jitter} x {self.retry_period_s} s"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> LeaseConfig:
        """AGENTSCALE_RC_LEASE_NAME, AGENTSCALE_RC_LEASE_DURATION_SECONDS,
        AGENTSCALE_RC_RENEW_DEADLINE_SECONDS, AGENTSCALE_RC_RETRY_PERIOD_SECONDS; the namespace from
        :func:`operator_namespace`."""
        d = cls()
        return cls(
            namespace=operator_namespace(env),
            name=env.get("AGENTSCALE_RC_LEASE_NAME") or d.name,
            lease_duration_s=int(env.get("AGENTSCALE_RC_LEASE_DURATION_SECONDS") or d.lease_duration_s),
            renew_deadline_s=float(env.get("AGENTSCALE_RC_RENEW_DEADLINE_SECONDS") or d.renew_deadline_s),
            retry_period_s=float(env.get("AGENTSCALE_RC_RETRY_PERIOD_SECONDS") or d.retry_period_s),
        )


def micro_time(t: dt.datetime) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class LeaderRecord:
    """A Lease's spec as leader election reads it."""

    holder: str
    lease_duration_s: int
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def of(cls, lease: Mapping[str, Any]) -> LeaderRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            lease_duration_s=int(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": self.lease_duration_s,
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


class Attempt(enum.Enum):
    ok = "ok"  # we hold the lease now (acquired or renewed)
    held = "held"  # someone else holds an unexpired lease
    failed = "failed"  # an API error, a timeout or a 409 conflict: try again


class LeaderElector:
    def __init__(
        self,
        api: LeaseApi,
        config: LeaseConfig,
        identity: str | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.identity = identity or new_identity()
        self.clock: Clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.observed: LeaderRecord | None = None
        self._observed_at = 0.0  # monotonic, when ``observed`` last changed
        self._renewed_at: float | None = None  # monotonic, our last successful acquire or renew
        self._leading = False
        self._listeners: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self._stop = asyncio.Event()  # for :meth:`start` / :meth:`stop` only
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ state

    @property
    def is_leader(self) -> bool:
        """Leading, and renewed within the renew deadline: check it right before every write."""
        return (
            self._leading
            and self._renewed_at is not None
            and self.clock.monotonic() - self._renewed_at < self.config.renew_deadline_s
        )

    @property
    def holder(self) -> str:
        """The holder last seen ("" when none)."""
        return self.observed.holder if self.observed else ""

    def add_listener(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None:
        """Called (synchronously, in the elector's task) when a term starts and when it ends; an exception
        in a listener is logged and never stops the election."""
        self._listeners.append((on_started, on_stopped))

    def _tell(self, started: bool) -> None:
        for listener in self._listeners:
            try:
                listener[0 if started else 1]()
            except Exception:
                log.exception("leadership listener failed")

    def _observe(self, record: LeaderRecord, now: float) -> None:
        if record != self.observed:
            self.observed, self._observed_at = record, now

    # ------------------------------------------------------------------ one attempt

    async def try_acquire_or_renew(self) -> Attempt:
        """Read the Lease and take or renew it if we may (client-go's tryAcquireOrRenew)."""
        cfg, lease_kind = self.config, kinds.LEASE
        stamp, now = micro_time(self.clock.now()), self.clock.monotonic()
        lease = await self.api.get(lease_kind.api_version, lease_kind.kind, cfg.namespace, cfg.name)
        if lease is None:
            record = LeaderRecord(self.identity, cfg.lease_duration_s, stamp, stamp, 0)
            await self.api.create(self._lease_object(record))
            self._won(record, now)
            return Attempt.ok
        old = LeaderRecord.of(lease)
        self._observe(old, now)
        ours = old.holder == self.identity
        if old.holder and not ours and now < self._observed_at + old.lease_duration_s:
            return Attempt.held
        if ours:
            record = LeaderRecord(
                self.identity, cfg.lease_duration_s, old.acquire_time, stamp, old.transitions
            )
        else:
            record = LeaderRecord(self.identity, cfg.lease_duration_s, stamp, stamp, old.transitions + 1)
        await self.api.replace({**lease, "spec": {**(lease.get("spec") or {}), **record.spec()}})
        self._won(record, now)
        return Attempt.ok

    def _won(self, record: LeaderRecord, now: float) -> None:
        self._observe(record, now)
        self._renewed_at = now

    def _lease_object(self, record: LeaderRecord) -> dict[str, Any]:
        return {
            "apiVersion": kinds.LEASE.api_version,
            "kind": kinds.LEASE.kind,
            "metadata": {"name": self.config.name, "namespace": self.config.namespace},
            "spec": record.spec(),
        }

    async def _attempt(self, budget_s: float) -> Attempt:
        try:
            return await asyncio.wait_for(self.try_acquire_or_renew(), timeout=max(budget_s, 0.001))
        except ApiError as exc:
            if exc.status != 409:
                log.warning("lease %s/%s: %s", self.config.namespace, self.config.name, exc)
            return Attempt.failed
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # timeouts, connection errors: the next attempt retries
            log.warning("lease %s/%s: %s", self.config.namespace, self.config.name, exc or type(exc).__name__)
            return Attempt.failed

    async def release(self) -> bool:
        """Clear ``holderIdentity`` if we hold the lease, so a successor takes over at once."""
        cfg = self.config
        self._leading = False
        try:
            lease = await asyncio.wait_for(
                self.api.get(kinds.LEASE.api_version, kinds.LEASE.kind, cfg.namespace, cfg.name),
                timeout=cfg.renew_deadline_s,
            )
            if lease is None or LeaderRecord.of(lease).holder != self.identity:
                return False
            old, stamp = LeaderRecord.of(lease), micro_time(self.clock.now())
            record = LeaderRecord("", 1, stamp, stamp, old.transitions)
            spec = {**(lease.get("spec") or {}), **record.spec()}
            await asyncio.wait_for(self.api.replace({**lease, "spec": spec}), timeout=cfg.renew_deadline_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "could not release lease %s/%s (it expires instead): %s", cfg.namespace, cfg.name, exc
            )
            return False
        self._observe(record, self.clock.monotonic())
        log.info("released lease %s/%s", cfg.namespace, cfg.name)
        return True

    # ------------------------------------------------------------------ the loop

    async def run(self, lead: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
        """Until ``stop``: acquire, run ``lead()`` while leading, cancel it when leadership is lost, and try
        again. On ``stop``: cancel ``lead()`` and release. ``lead()`` ending by itself while leading also
        gives the lease up (released; we compete again after a retry period)."""
        cfg = self.config
        while not stop.is_set():
            if not await self._acquire(stop):
                break
            self._leading = True
            log.info("%s leads (lease %s/%s)", self.identity, cfg.namespace, cfg.name)
            self._tell(started=True)
            task: asyncio.Task[None] = asyncio.create_task(_as_none(lead()), name="agentscale-leading")
            try:
                await self._renew_until_lost(stop, task)
            finally:
                self._leading = False
                self._tell(started=False)
                if not task.done():
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if stop.is_set():
                break
            if task.done() and not task.cancelled():
                exc = task.exception()
                log.error("the leading task ended (%r); releasing the lease", exc, exc_info=exc)
                await self.release()
                await self._wait(self._jittered(), stop)
        if self.observed is not None and self.observed.holder == self.identity:
            await self.release()

    def start(self) -> None:
        """Run the election as a task of its own, with nothing to lead but what the listeners do (the
        operator does this when the resource controller, which otherwise runs it, is disabled)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(_hold, self._stop), name="agentscale-election")

    async def stop(self) -> None:
        """Stop what :meth:`start` started and release the lease; nothing when it was not started."""
        if self._task is None:
            return
        self._stop.set()
        done, _ = await asyncio.wait([self._task], timeout=self.config.renew_deadline_s + 5.0)
        if not done:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _acquire(self, stop: asyncio.Event) -> bool:
        while not stop.is_set():
            attempt = await self._attempt(self.config.renew_deadline_s)
            if attempt is Attempt.ok:
                return True
            if await self._wait(self._jittered(), stop):
                return False
        return False

    async def _renew_until_lost(self, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
        cfg = self.config
        while True:
            if await self._wait(cfg.retry_period_s, stop, task):
                return
            deadline = self.clock.monotonic() + cfg.renew_deadline_s
            while True:
                attempt = await self._attempt(deadline - self.clock.monotonic())
                if attempt is Attempt.ok:
                    break
                if attempt is Attempt.held:
                    log.warning("%s lost the lease to %s", self.identity, self.holder)
                    return
                if self.clock.monotonic() >= deadline:
                    log.warning(
                        "%s could not renew within %s s: stops leading", self.identity, cfg.renew_deadline_s
                    )
                    return
                if await self._wait(cfg.retry_period_s, stop, task):
                    return

    def _jittered(self) -> float:
        return self.config.retry_period_s * (1.0 + self.config.jitter * self.rng.random())

    async def _wait(
        self, seconds: float, stop: asyncio.Event, task: asyncio.Task[None] | None = None
    ) -> bool:
        """Sleep on the clock; True when ``stop`` is set or ``task`` ended (either wakes it early)."""
        if stop.is_set() or (task is not None and task.done()):
            return True
        helpers = [asyncio.ensure_future(self.clock.sleep(seconds)), asyncio.ensure_future(stop.wait())]
        try:
            await asyncio.wait([*helpers, *([task] if task else [])], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for h in helpers:
                h.cancel()
        return stop.is_set() or (task is not None and task.done())


async def _as_none(aw: Awaitable[None]) -> None:
    await aw


async def _hold() -> None:
    """A term's work when there is none of its own: wait until cancelled (the term ends)."""
    await asyncio.Event().wait()
