"""Arrival traces: seeded generators and the CSV format.

A trace is a sorted float array of arrival timestamps in seconds from 0, plus its length in whole seconds. The
generated traces are non-homogeneous Poisson processes: a rate per second from a shape (steady, step, diurnal,
flash crowd, bursty mix), a Poisson count per second, times uniform within the second. The same name and seed
give the same arrivals on every machine (numpy's PCG64).

CSV: one column, one arrival timestamp (seconds, any origin) per line; an optional first line that is not a
number is taken as a header. Timestamps are sorted and shifted so the first second of the trace is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

BASE_RPS = 500.0
"""The generated traces' base rate: about six replicas of the measured step at 70% busy."""


@dataclass(frozen=True)
class Trace:
    name: str
    arrivals: NDArray[Any]  # sorted float64 seconds, all in [0, duration_s)
    duration_s: int
    description: str

    @property
    def requests(self) -> int:
        return len(self.arrivals)

    def rate_per_second(self) -> NDArray[Any]:
        """Arrivals counted per second of the trace (for plots)."""
        return np.bincount(self.arrivals.astype(np.int64), minlength=self.duration_s)[: self.duration_s]


def from_rates(name: str, rates: NDArray[Any], seed: int, description: str) -> Trace:
    """Poisson arrivals with the given rate per second (requests/s), seeded."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.maximum(rates, 0.0))
    seconds = np.repeat(np.arange(len(rates), dtype=np.float64), counts)
    arrivals = np.sort(seconds + rng.random(len(seconds)))
    return Trace(name, arrivals, len(rates), description)


def _steady(base: float, rng: np.random.Generator) -> NDArray[Any]:
    return np.full(1200, base)


def _step(base: float, rng: np.random.Generator) -> NDArray[Any]:
    return np.concatenate([np.full(600, base * 0.5), np.full(1200, base * 2.0)])


def _diurnal(base: float, rng: np.random.Generator) -> NDArray[Any]:
    t = np.arange(3600)
    # one day compressed into an hour: trough 0.25 x base, peak 2 x base
    return np.asarray(base * (1.125 - 0.875 * np.cos(2 * math.pi * t / 3600)))


def _flash(base: float, rng: np.random.Generator) -> NDArray[Any]:
    t = np.arange(1800, dtype=np.float64)
    low, high = base * 0.75, base * 7.5  # 10x
    up = np.clip((t - 600) / 10.0, 0.0, 1.0)  # 10x within 10 s at t = 600
    down = np.clip((t - 900) / 60.0, 0.0, 1.0)  # held 290 s, back down over 60 s
    return low + (high - low) * up * (1.0 - down)


def _bursty(base: float, rng: np.random.Generator) -> NDArray[Any]:
    n = 7200
    t = np.arange(n, dtype=np.float64)
    level = base * (1.0 + 0.4 * np.sin(2 * math.pi * t / 2400))  # slow swell, 40-minute period
    factor = np.ones(n)
    start = float(rng.exponential(300.0))
    while start < n:  # bursts: 2x to 6x, 10 s to 2 min, reached within 5 s, every ~5 min on average
        height, length = rng.uniform(2.0, 6.0), rng.uniform(10.0, 120.0)
        rise = np.clip((t - start) / 5.0, 0.0, 1.0) * (t < start + length)
        factor = np.maximum(factor, 1.0 + (height - 1.0) * rise)
        start += length + float(rng.exponential(300.0))
    noise = rng.lognormal(0.0, 0.1, n)  # second-to-second wobble
    return np.asarray(level * factor * noise)


SHAPES: dict[str, tuple[Callable[[float, np.random.Generator], NDArray[Any]], str]] = {
    "steady": (_steady, "20 min at 1x base"),
    "step": (_step, "10 min at 0.5x, then 20 min at 2x base (4x step)"),
    "diurnal": (_diurnal, "one day compressed into 1 h: 0.25x to 2x base, cosine"),
    "flash-crowd": (_flash, "0.75x base; at 10 min 10x within 10 s, held ~5 min, back over 60 s; 30 min"),
    "bursty": (_bursty, "2 h: slow swell +-40%, bursts 2x-6x for 10-120 s every ~5 min, lognormal noise"),
}


def generate(name: str, seed: int = 1, base_rps: float = BASE_RPS) -> Trace:
    """One of :data:`SHAPES`, seeded."""
    if name not in SHAPES:
        raise ValueError(f"unknown trace {name!r}; choose one of {', '.join(SHAPES)} or pass a CSV file")
    shape, description = SHAPES[name]
    rng = np.random.default_rng([seed, 7])  # the shape's own stream (bursts, noise)
    rates = shape(base_rps, rng)
    return from_rates(name, rates, seed, f"{description}; base {base_rps:g} req/s, seed {seed}")


def load_csv(path: Path) -> Trace:
    """A trace from a CSV of arrival timestamps (one column, seconds); errors name the line and the fix."""
    values: list[float] = []
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if "," in text:
            raise ValueError(
                f"{path}:{number}: expected one column (an arrival timestamp in seconds), got {text!r}"
            )
        try:
            value = float(text)
        except ValueError:
            if not values and number == 1:
                continue  # a header
            raise ValueError(f"{path}:{number}: {text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{path}:{number}: timestamps must be finite and >= 0, got {text!r}")
        values.append(value)
    if not values:
        raise ValueError(f"{path}: no arrival timestamps (one column of seconds, one per line)")
    arrivals = np.sort(np.asarray(values, dtype=np.float64))
    arrivals -= math.floor(arrivals[0])
    duration = max(1, math.ceil(float(arrivals[-1]) + 1e-9))
    if arrivals[-1] >= duration:
        duration += 1
    return Trace(path.stem, arrivals, duration, f"replayed from {path.name} ({len(arrivals)} arrivals)")


def save_csv(trace: Trace, path: Path) -> None:
    """Write a trace in the CSV format :func:`load_csv` reads (header ``t_s``, microsecond precision)."""
    path.write_text("t_s\n" + "".join(f"{t:.6f}\n" for t in trace.arrivals))
