"""The Prometheus that ``make demo`` runs for the resource controller: printed as JSON for ``kubectl apply``.

The same Deployment the e2e closed loop runs (e2e/tests/prometheus_support.py, imported rather than copied):
Debian's Prometheus in the image images/prometheus.Dockerfile builds, on the real node (the host cannot
reach pod addresses, so the Prometheus that scrapes the pods and that the operator queries runs as a pod
there), one ``kubernetes_sd_configs`` job over the demo namespace relabelled as docs/tuning.md "Signals"
tells production to, a 2 s scrape and an emptyDir TSDB.

Usage: python scripts/demo_prometheus.py NAMESPACE WATCHED_NAMESPACE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e" / "tests"))

from prometheus_support import PORT, manifests

SCRAPE_INTERVAL_S = 2.0


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    namespace, watched = argv
    docs = manifests(namespace, [watched], scrape_interval_s=SCRAPE_INTERVAL_S)
    print(json.dumps({"apiVersion": "v1", "kind": "List", "items": docs}))
    print(f"http://prometheus.{namespace}:{PORT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
