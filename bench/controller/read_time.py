"""The resource controller's Prometheus read at fleet size, as a committed result: 1,000 workflows x 4 steps
and a model server each (57,000 series) scraped by a real Prometheus, read with one query per signal and from
the recording rules' series (``AGENTSCALE_RC_RECORDED_SIGNALS=1``), both against the same Prometheus.

    .venv/bin/python -m bench.controller.read_time     # writes results/read.json (about 2 minutes)

The measurement is the operator test ``operator/tests/test_resource_signals_scale.py`` (one implementation:
the test asserts one query per signal and equal values both ways, and writes its timings when
``AGENTSCALE_RECORD_READ`` names a file); this runs it and adds the machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results"
TEST = "operator/tests/test_resource_signals_scale.py"


def main() -> int:
    out = RESULTS / "read.json"
    env = {**os.environ, "AGENTSCALE_RECORD_READ": str(out), "AGENTSCALE_REQUIRE_SERVICES": "1"}
    cmd = [sys.executable, "-m", "pytest", TEST, "-q", "-s", "-p", "no:cacheprovider"]
    rc = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
    if rc != 0:
        print(f"{TEST} failed (exit {rc}); nothing written", file=sys.stderr)
        return rc
    doc = json.loads(out.read_text())
    doc["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_at_end": [round(x, 2) for x in os.getloadavg()],
        "generated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
    }
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"median read: {doc['median_ms']} ms; recorded/queries {doc['recorded_over_queries']}; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
