"""Shared pieces of the Helm chart tests (a plain module, so tests can import it): the chart's paths and a
small helm runner.

`helm lint` and `helm template` need only the helm binary (on PATH from e2e/cluster/env.sh, else the cached
build).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from operator_support import REPO

CHART = REPO / "charts" / "agentscale"
RELEASE_NS = "agentscale-system"  # for rendering only
# helm template checks Chart.yaml's kubeVersion against this (a `go install` build of helm defaults to 1.20).
KUBE_VERSION = ["--kube-version", "v1.34.0"]
CLUSTER_DIR = REPO / "e2e" / "cluster"


def resolve_helm() -> str:
    """helm on PATH (e2e/cluster/env.sh puts the cached build first), else the cached build itself."""
    found = shutil.which("helm")
    if found:
        return found
    cached = subprocess.run(
        ["bash", "-c", '. "$1/versions.sh" && agentscale_bin helm', "_", str(CLUSTER_DIR)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    ).stdout.strip()
    if cached and os.access(cached, os.X_OK):
        return cached
    pytest.fail("no helm: run e2e/cluster/build.sh helm (or . e2e/cluster/env.sh)", pytrace=False)


@dataclass(frozen=True)
class Helm:
    binary: str
    kubeconfig: str | None = None

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**os.environ}
        if self.kubeconfig:
            env["KUBECONFIG"] = self.kubeconfig
        return subprocess.run(
            [self.binary, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
        )

    def __call__(self, *args: str, timeout: float = 120) -> str:
        proc = self.run(*args, timeout=timeout)
        assert proc.returncode == 0, f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}"
        return proc.stdout

    def template(self, *args: str) -> list[dict[str, Any]]:
        out = self("template", "agentscale", str(CHART), "--namespace", RELEASE_NS, *KUBE_VERSION, *args)
        return [d for d in yaml.safe_load_all(out) if d]
