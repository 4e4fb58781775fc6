"""The GPU serving benchmark's CPU variant (bench/dataplane/bench_gpu.py, shape ``CPU``), so its code path
cannot rot on machines without a GPU: the same network, model.py, Triton configuration and clients as the GPU
run, on the CPU with a small MLP for a few seconds. Checks behaviour only, never speed."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from .conftest import _missing

pytestmark = pytest.mark.triton

ROOT = Path(__file__).resolve().parents[2]


def test_triton_serves_the_same_torch_network_as_raw_torch() -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        _missing("torch is not installed (the workloads' install adds the CPU build)")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the bench package lives at the repository root
    from bench.dataplane import bench_gpu

    try:
        out = bench_gpu.run(bench_gpu.CPU)
    except RuntimeError as e:
        if "not installed" in str(e):
            _missing(str(e))
        raise
    assert out["answers_checked"] == 64
    assert out["answers_match"], f"Triton differs from raw torch by up to {out['answers_max_abs_diff']}"
    for key in ("torch_compute_samples_s", "torch_with_copies_samples_s", "triton_samples_s"):
        assert math.isfinite(out[key]) and out[key] > 0, (key, out[key])
    assert out["ratio_with_copies"] > 0 and out["ratio_compute_only"] > 0
    assert out["shape"]["device"] == "cpu"
