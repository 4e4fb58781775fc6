"""The step's service time: a lognormal fitted to the data plane's measured latency of one request.

Source: ``bench/dataplane/results/overhead.json``, row ``gateway``: one request through the gateway, a Redis
stream, a step worker and Triton (``query-encoder``) and back, measured at 4 concurrent callers on the machine
named in that file. Its p50 and p95 fix the lognormal (median = p50, sigma = ln(p95 / p50) / z(0.95)); its p99
is the check the fit is printed with. In the simulator one replica serves one message at a time for a time
drawn from this distribution (a worker with ``concurrency: 1``), so the measured figure, which also holds the
gateway's and the client's share, makes the step a little slower than it is: conservative for every policy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

ROOT = Path(__file__).resolve().parents[2]
MEASURED = ROOT / "bench" / "dataplane" / "results" / "overhead.json"
Z95, Z99 = 1.6448536269514722, 2.3263478740408408


@dataclass(frozen=True)
class ServiceModel:
    median_s: float
    sigma: float
    source: str
    measured_p99_s: float | None = None

    @property
    def mean_s(self) -> float:
        return self.median_s * math.exp(self.sigma**2 / 2.0)

    def quantile_s(self, z: float) -> float:
        return self.median_s * math.exp(self.sigma * z)

    def draw(self, n: int, seed: int) -> NDArray[Any]:
        """``n`` service times (seconds), seeded: the same for every policy on one trace."""
        rng = np.random.default_rng([seed, 11])
        return rng.lognormal(math.log(self.median_s), self.sigma, n)

    def describe(self) -> dict[str, Any]:
        return {
            "distribution": "lognormal",
            "median_ms": round(self.median_s * 1000, 3),
            "sigma": round(self.sigma, 4),
            "mean_ms": round(self.mean_s * 1000, 3),
            "p95_ms": round(self.quantile_s(Z95) * 1000, 3),
            "p99_ms_fitted": round(self.quantile_s(Z99) * 1000, 3),
            "p99_ms_measured": None if self.measured_p99_s is None else round(self.measured_p99_s * 1000, 3),
            "source": self.source,
        }


def fit(p50_s: float, p95_s: float, source: str, p99_s: float | None = None) -> ServiceModel:
    if not 0 < p50_s < p95_s:
        raise ValueError(f"service time fit needs 0 < p50 < p95, got {p50_s}, {p95_s}")
    return ServiceModel(p50_s, math.log(p95_s / p50_s) / Z95, source, p99_s)


def measured(path: Path = MEASURED) -> ServiceModel:
    """The lognormal of the measured gateway path (the committed result file)."""
    data = json.loads(path.read_text())
    row = data["gateway"]
    source = (
        f"{path.relative_to(ROOT)} 'gateway' (p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms, "
        f"{row['concurrency']} callers; {data['machine']}; {data['when']})"
    )
    return fit(row["p50_ms"] / 1000, row["p95_ms"] / 1000, source, row["p99_ms"] / 1000)
