"""What the demo's Python modules share (demo.py, demo_pods.py, demo_local.py, demo_load.py): the settings
from demo.sh's environment, kubectl, ``say``, the Ready condition and the local process description.

Importing it puts the repository root on sys.path (for ``bench``), so import it before ``bench``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

KUBECTL = os.environ.get("DEMO_KUBECTL", "kubectl")
NS = os.environ.get("DEMO_NAMESPACE", "demo")
RUN = Path(os.environ.get("DEMO_RUN_DIR", str(ROOT / ".run" / "demo")))
SECONDS = min(900.0, max(5.0, float(os.environ.get("DEMO_SECONDS", "90"))))
RPS = min(2000.0, max(1.0, float(os.environ.get("DEMO_RPS", "100"))))
WORKFLOW = "shop-recs"


def say(msg: str = "") -> None:
    print(f"    {msg}" if msg else "", flush=True)


def kubectl(*args: str, timeout: float = 30) -> str:
    out = subprocess.run([KUBECTL, *args], capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def kjson(*args: str) -> Any:
    return json.loads(kubectl(*args, "-o", "json"))


def ready_status(aw: dict[str, Any]) -> tuple[str, str]:
    for c in (aw.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return str(c.get("status")), str(c.get("reason") or "")
    return "Unknown", "NoStatusYet"


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    metrics_port: int
    replicas: int = 0  # ready replicas of its Deployment in the cluster
