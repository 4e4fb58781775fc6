"""Operator fixtures: the CRD installed with kubectl, and the operator: installed by the chart in pods on the
real node (incluster.py), or as a local process when the cluster has no real node."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chart_support import Helm, resolve_helm
from incluster import InClusterOperator
from operator_support import CRDS, REPO


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """``agentscale run --standalone`` as a subprocess; restartable; logs to a file for failures."""

    def __init__(self, kubeconfig: str, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"operator-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        env = {**os.environ, "KUBECONFIG": self.kubeconfig, "PYTHONUNBUFFERED": "1"}
        log = self.log_path.open("wb")
        port = _free_port()
        url = f"http://127.0.0.1:{port}/healthz"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agentscale.cli", "run", "--standalone", "--liveness", url],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"operator did not start in 60s:\n{self.log_path.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def lease_namespace(self) -> str:
        return os.environ.get("AGENTSCALE_NAMESPACE") or os.environ.get("POD_NAMESPACE") or "default"

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))


@pytest.fixture(scope="session")
def crd(kubectl: Any) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRDS))
    kubectl("wait", "--for=condition=Established", "crd/agentworkflows.agentscale.io", "--timeout=60s")


def operator_mode() -> str:
    """``chart`` (the default with a real node: the operator installed by Helm, in pods on the real node,
    under the chart's RBAC) or ``process`` (a local process with the admin kubeconfig; the only choice on a
    cluster without a real node). AGENTSCALE_E2E_OPERATOR picks one; CI runs the chart."""
    mode = os.environ.get("AGENTSCALE_E2E_OPERATOR")
    if mode is None:
        mode = "process" if os.environ.get("AGENTSCALE_REAL_NODE", "1") == "0" else "chart"
    if mode not in ("chart", "process"):
        raise pytest.UsageError(f"AGENTSCALE_E2E_OPERATOR={mode!r}: use chart or process")
    return mode


@pytest.fixture(scope="session")
def operator(
    kubeconfig: str, kubectl: Any, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess | InClusterOperator]:
    op: OperatorProcess | InClusterOperator
    if operator_mode() == "chart":
        op = InClusterOperator(kubectl, Helm(resolve_helm(), kubeconfig))
        op.install()
    else:
        op = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator"))
        op.start()
    yield op
    if os.environ.get("AGENTSCALE_E2E_SHOW_LOGS") == "1":
        print(op.logs()[-20000:])
    op.stop()


@pytest.fixture(autouse=True)
def _operator_alive_after(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that used the operator fails if the operator died during it (it must never crash)."""
    yield
    if "operator" in request.fixturenames:
        op: OperatorProcess | InClusterOperator = request.getfixturevalue("operator")
        assert op.alive(), f"the operator died (or a pod of it restarted):\n{op.logs()[-4000:]}"
