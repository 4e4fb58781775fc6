"""The sensors: every signal of every workflow from Prometheus, one query per signal, on the event loop.

``PrometheusReader.read()`` sends the queries of ``promql.queries`` at once (aiohttp, each bounded by a
timeout) and answers a :class:`Reading`: per signal either values per part or an error, with how long the
query took. It never raises (cancellation aside): Prometheus unreachable, an HTTP error, a query error, an
empty answer or a malformed one become a :class:`SignalError` on that signal, and the reading keeps the time
of the last read Prometheus answered in full, for the loop's ``MetricsUnavailable`` condition and its own
metrics. ``Reading.signals(...)`` maps one part's values into the policy's :class:`Signals` (``None`` where
unknown: the policy never scales down on it).

:func:`assess` turns a reading into one workflow's :class:`MetricsHealth` (pure), which the loop reports as
the workflow's ``MetricsUnavailable`` condition and uses to fail static: Prometheus did not answer every
query, or it answered with no series for a queue- or slo-mode part that runs replicas.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cached_property
from types import TracebackType
from typing import Any, NamedTuple

import aiohttp

from agentscale.resource_controller.promql import (
    NAMESPACE,
    PART_LABEL,
    WORKFLOW,
    Signal,
    Windows,
    queries,
    recorded_queries,
)
from agentscale.resource_controller.snapshot import PartKind, Signals, WorkflowSnapshot


class ErrorKind(StrEnum):
    """Why a signal has no values; one CamelCase word, fit for a condition reason or a metric label."""

    Unreachable = "Unreachable"  # no answer: connection refused, DNS, timeout
    HTTPError = "HTTPError"  # an HTTP status other than 200 that is not a PromQL error
    QueryError = "QueryError"  # Prometheus rejected or failed the query (bad_data, execution, timeout)
    InvalidResponse = "InvalidResponse"  # not what the HTTP API documents
    NoSeries = "NoSeries"  # answered, with no series: nothing exports it (yet)

    @property
    def answered(self) -> bool:
        """Prometheus itself worked; the data is what is missing."""
        return self == ErrorKind.NoSeries


@dataclass(frozen=True)
class SignalError:
    kind: ErrorKind
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


class PartRef(NamedTuple):
    """One step or model server of one workflow, as its series name it."""

    namespace: str
    workflow: str
    kind: PartKind
    name: str

    @property
    def key(self) -> str:
        """``step/<name>`` or ``model/<name>``, as ``Part.key``."""
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class SignalResult:
    """One signal for every part, from one query."""

    signal: Signal
    values: Mapping[PartRef, float]
    """Finite values only: NaN (a ratio without traffic) and infinities are unknown, so absent."""
    error: SignalError | None
    duration_s: float
    """How long the query took, answer or not."""
    series: int = 0
    """Series in the answer, unknown values and unlabelled ones included."""
    unlabelled: int = 0
    """Series without ``namespace``, ``workflow`` or the part's label: no workflow to give them to."""
    last_success: float | None = None
    """Clock time of the last read in which this signal had values."""


@dataclass(frozen=True)
class Reading:
    """Every signal at one read."""

    started: float
    """Clock time the read began (the reader's clock: wall time by default)."""
    duration_s: float
    results: Mapping[Signal, SignalResult]
    last_success: float | None
    """Clock time of the last read Prometheus answered in full (this one, if it did); None if never."""

    @property
    def errors(self) -> dict[Signal, SignalError]:
        return {s: r.error for s, r in self.results.items() if r.error is not None}

    @property
    def available(self) -> bool:
        """Prometheus answered every query (some may have had no series)."""
        return all(e.kind.answered for e in self.errors.values())

    def age_s(self, now: float) -> float | None:
        """Seconds since the last read Prometheus answered in full (the controller's staleness gauge)."""
        return None if self.last_success is None else max(0.0, now - self.last_success)

    def parts(self) -> set[PartRef]:
        """Every part some signal has a value for."""
        return {ref for refs in self._by_workflow.values() for ref in refs}

    @cached_property
    def _by_workflow(self) -> dict[tuple[str, str], set[PartRef]]:
        out: dict[tuple[str, str], set[PartRef]] = defaultdict(set)
        for r in self.results.values():
            for ref in r.values:
                out[(ref.namespace, ref.workflow)].add(ref)
        return dict(out)

    def part_keys(self, namespace: str, name: str) -> set[str]:
        """Keys (``step/a``) of one workflow's parts that some signal has a value for."""
        return {ref.key for ref in self._by_workflow.get((namespace, name), set())}

    def workflow(
        self, namespace: str, name: str, slots: Mapping[str, int] | None = None
    ) -> dict[str, Signals]:
        """The :class:`Signals` of every part of one workflow that has any value, by part key (``step/a``);
        ``slots`` by part key as in :meth:`signals` (1 where absent). A part missing here has no signal."""
        slots = slots or {}
        refs = self._by_workflow.get((namespace, name), set())
        return {ref.key: self.signals(ref, slots.get(ref.key, 1)) for ref in refs}

    def value(self, signal: Signal, ref: PartRef) -> float | None:
        result = self.results.get(signal)
        return None if result is None else result.values.get(ref)

    def signals(self, ref: PartRef, slots: int = 1) -> Signals:
        """The policy's :class:`Signals` of one part. ``slots``: what one replica serves at once (a step's
        ``concurrency``, a model server's ``instanceGroup.count``): a message holds one of a worker's slots
        for the step's mean latency, so replica-seconds per message are that over ``slots``; a Triton
        instance is busy for an execution's compute time, shared by the inferences of the batch."""
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")

        def get(signal: Signal) -> float | None:
            return self.value(signal, ref)

        def per_slot(x: float | None) -> float | None:
            return None if x is None else x / slots

        if ref.kind == PartKind.step:
            return Signals(
                arrival_rps=get(Signal.step_arrival_rps),
                arrival_rps_short=get(Signal.step_arrival_rps_short),
                service_time_s=per_slot(get(Signal.step_mean_latency_s)),
                queue_lag=get(Signal.step_queue_lag),
                p95_latency_s=get(Signal.step_p95_latency_s),
            )
        return Signals(
            arrival_rps=get(Signal.model_arrival_rps),
            arrival_rps_short=get(Signal.model_arrival_rps_short),
            service_time_s=per_slot(get(Signal.model_service_time_s)),
            mean_batch=get(Signal.model_mean_batch),
            p95_latency_s=get(Signal.model_p95_latency_s),
            queue_time_s=get(Signal.model_queue_time_s),
        )


class _Failed(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.error = SignalError(kind, message)


def parse_vector(signal: Signal, body: Any) -> tuple[dict[PartRef, float], int, int]:
    """An instant-query answer (``{"status": "success", "data": {"resultType": "vector", ...}}``) as values
    per part, the number of series and of unlabelled ones. Raises ``_Failed`` on anything else."""
    try:
        data = body["data"]
        if data["resultType"] != "vector":
            raise _Failed(ErrorKind.InvalidResponse, f"result type {data['resultType']!r}, not a vector")
        kind, values, unlabelled = signal.kind, {}, 0
        for item in data["result"]:
            labels = item["metric"]
            ns, wf, part = labels.get(NAMESPACE), labels.get(WORKFLOW), labels.get(PART_LABEL[kind])
            if not (ns and wf and part):
                unlabelled += 1
                continue
            x = float(item["value"][1])
            if math.isfinite(x):
                values[PartRef(ns, wf, kind, part)] = x
        return values, len(data["result"]), unlabelled
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise _Failed(ErrorKind.InvalidResponse, f"unexpected answer ({type(e).__name__}: {e})") from e


@dataclass
class PrometheusReader:
    """Reads every signal from the Prometheus HTTP API at ``url`` (``http://prometheus:9090``).

    ``session``: an aiohttp session to use (tests pass one with a trace config to count requests); without
    one the reader opens its own on first use and closes it in :meth:`close`. ``clock``: the time stamps of
    readings (wall time by default, so status can show them)."""

    url: str
    windows: Windows = field(default_factory=Windows)
    timeout_s: float = 5.0
    session: aiohttp.ClientSession | None = None
    clock: Callable[[], float] = time.time
    recorded: bool = False
    """Read the series :func:`promql.recording_rules` records instead of sending the queries themselves."""
    _own_session: bool = field(default=False, init=False)
    _queries: dict[Signal, str] = field(default_factory=dict, init=False)
    _last_success: float | None = field(default=None, init=False)
    _signal_success: dict[Signal, float] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError("timeout_s must be > 0")
        self.url = self.url.rstrip("/")
        self._queries = recorded_queries() if self.recorded else queries(self.windows)

    @property
    def queries(self) -> Mapping[Signal, str]:
        return self._queries

    async def read(self) -> Reading:
        """One query per signal, all at once; never raises (a cancelled read is cancelled)."""
        session = self._session()
        started, t0 = self.clock(), time.perf_counter()
        got = await asyncio.gather(*(self._one(session, s, q) for s, q in self._queries.items()))
        duration = time.perf_counter() - t0
        results = {}
        for r in got:
            if r.error is None:
                self._signal_success[r.signal] = started
            results[r.signal] = replace(r, last_success=self._signal_success.get(r.signal))
        if all(r.error is None or r.error.kind.answered for r in got):
            self._last_success = started
        return Reading(started, duration, results, self._last_success)

    async def _one(self, session: aiohttp.ClientSession, signal: Signal, query: str) -> SignalResult:
        t0 = time.perf_counter()
        try:
            body = await self._post(session, query)
            values, series, unlabelled = parse_vector(signal, body)
            error = None if series else SignalError(ErrorKind.NoSeries, f"no series for {signal}")
            return SignalResult(signal, values, error, time.perf_counter() - t0, series, unlabelled)
        except _Failed as e:
            return SignalResult(signal, {}, e.error, time.perf_counter() - t0)
        except Exception as e:  # a reader that raised would stop the loop: record it, fail static
            error = SignalError(ErrorKind.InvalidResponse, f"{type(e).__name__}: {e}")
            return SignalResult(signal, {}, error, time.perf_counter() - t0)

    async def instant(self, query: str) -> tuple[Any, SignalError | None]:
        """One instant query (any PromQL; right-sizing's per-pod queries): the decoded answer and None, or
        None and why not. An answer without series is ``NoSeries`` (answered). Never raises."""
        try:
            body = await self._post(self._session(), query)
        except _Failed as e:
            return None, e.error
        except Exception as e:  # as in _one: a reader that raised would stop the loop
            return None, SignalError(ErrorKind.InvalidResponse, f"{type(e).__name__}: {e}")
        if not ((body.get("data") or {}).get("result")):
            return body, SignalError(ErrorKind.NoSeries, "no series")
        return body, None

    async def _post(self, session: aiohttp.ClientSession, query: str) -> Any:
        """POST /api/v1/query; the decoded JSON of a successful answer, else ``_Failed``."""
        form = {"query": query, "timeout": f"{self.timeout_s:g}"}  # seconds: the server gives up too
        try:
            async with session.post(
                f"{self.url}/api/v1/query", data=form, timeout=aiohttp.ClientTimeout(total=self.timeout_s)
            ) as resp:
                status, text = resp.status, await resp.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            what = f"timed out after {self.timeout_s:g} s" if isinstance(e, TimeoutError) else str(e)
            what = what or type(e).__name__
            raise _Failed(ErrorKind.Unreachable, f"Prometheus at {self.url}: {what}") from e
        try:
            body = json.loads(text)
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("status") == "error":
            kind = f"{body.get('errorType', 'error')}"
            raise _Failed(ErrorKind.QueryError, f"HTTP {status}, {kind}: {body.get('error', '')}")
        if status != 200:
            raise _Failed(ErrorKind.HTTPError, f"HTTP {status}: {text[:200]}")
        if not isinstance(body, dict) or body.get("status") != "success":
            raise _Failed(ErrorKind.InvalidResponse, f"not a Prometheus answer: {text[:200]!r}")
        return body

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession()
            self._own_session = True
        return self.session

    async def close(self) -> None:
        if self._own_session and self.session is not None:
            await self.session.close()
        self.session = None
        self._own_session = False

    async def __aenter__(self) -> PrometheusReader:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


# -- one workflow's health, for the MetricsUnavailable condition and fail static (pure) ------------------

METRICS_OK = "MetricsAvailable"
"""The condition's reason while every controlled part has series."""


@dataclass(frozen=True)
class MetricsHealth:
    """Whether the signals of one workflow's queue- and slo-mode parts could be read this cycle."""

    unavailable: bool
    reason: str
    """One CamelCase word: an :class:`ErrorKind` when unavailable, else ``MetricsAvailable``."""
    message: str
    affected: frozenset[str] = frozenset()
    """Part keys that may not scale down this cycle (every controlled part when Prometheus failed)."""


def _failure(errors: Mapping[Signal, SignalError], total: int) -> tuple[str, str]:
    """The most common kind among queries Prometheus did not answer, and one line naming each distinct
    error once."""
    kinds: dict[str, int] = defaultdict(int)
    texts: dict[str, None] = {}
    for e in errors.values():
        kinds[e.kind] += 1
        texts[str(e)] = None
    kind = max(kinds, key=lambda k: kinds[k])
    text = "; ".join(texts)
    text = text if len(text) <= 600 else text[:597] + "..."
    return kind, f"{len(errors)} of {total} Prometheus queries failed: {text}"


def assess(
    reading: Reading, snap: WorkflowSnapshot, reporting: Collection[str] | None = None
) -> MetricsHealth | None:
    """The health of ``snap``'s workflow in ``reading``; None when it has no queue- or slo-mode part (the
    controller does not size it). Unavailable when Prometheus did not answer every query (each controlled
    part is affected), or when a controlled part that should be reporting has no series at all (those parts
    are). ``reporting``: the part keys that should (the loop's: ready replicas for a grace period); by
    default every part with replicas. A part at zero runs no workers, so its silence is expected."""
    controlled = [p for p in snap.parts if p.controlled]
    if not controlled:
        return None
    failed = {s: e for s, e in reading.errors.items() if not e.kind.answered}
    if failed:
        kind, message = _failure(failed, len(reading.results))
        why = f"{message}; holding replicas, not scaling down"
        return MetricsHealth(True, kind, why, frozenset(p.key for p in controlled))
    seen = reading.part_keys(snap.namespace, snap.name)
    should = (lambda p: p.replicas > 0) if reporting is None else (lambda p: p.key in reporting)
    silent = [p for p in controlled if should(p) and p.key not in seen]
    if silent:
        names = ", ".join(p.key for p in silent)
        example = silent[0]
        labels = (
            f'{NAMESPACE}="{snap.namespace}", {WORKFLOW}="{snap.name}", '
            f'{PART_LABEL[example.kind]}="{example.name}"'
        )
        message = (
            f"Prometheus has no series for {names} (looked for {{{labels}}}): are its pods scraped "
            "(docs/tuning.md, Signals)? Holding those replicas, not scaling down"
        )
        return MetricsHealth(True, ErrorKind.NoSeries, message, frozenset(p.key for p in silent))
    return MetricsHealth(
        False,
        METRICS_OK,
        "Prometheus answered every query, with series for each queue- and slo-mode part that should report.",
    )
