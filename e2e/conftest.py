"""Fixtures for end-to-end tests that talk to a real Kubernetes API server.

The suite is cluster-agnostic: it uses whatever kubeconfig it is given ($KUBECONFIG, else the
local cluster's <repo>/.cluster/kubeconfig written by e2e/cluster/up.sh), so the same tests run
on the kwok cluster and on kind. Without a reachable cluster the tests FAIL with a clear message;
set AGENTSCALE_E2E=0 to skip them instead.

Fixtures: ``kubeconfig`` (session), ``kubectl`` (session, a :class:`Kubectl`), ``namespace``
(a fresh namespace per test, deleted afterwards) and ``wait_for`` (the :func:`wait_for` helper).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parent.parent
CLUSTER_DIR = REPO / "e2e" / "cluster"
DEFAULT_KUBECONFIG = REPO / ".cluster" / "kubeconfig"
E2E_LABEL = "agentscale.io/e2e"

T = TypeVar("T")


def e2e_enabled() -> bool:
    return os.environ.get("AGENTSCALE_E2E", "1") != "0"


class KubectlError(RuntimeError):
    """A kubectl command exited non-zero; carries its arguments, exit code and stderr."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        self.args_ = list(args)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"kubectl {' '.join(args)} failed (exit {returncode}): {stderr.strip()}")


def resolve_kubectl() -> str:
    """The kubectl to run: $AGENTSCALE_KUBECTL, else the cached 1.34 build, else kubectl on PATH."""
    explicit = os.environ.get("AGENTSCALE_KUBECTL")
    if explicit:
        return explicit
    try:
        cached = subprocess.run(
            ["bash", "-c", '. "$1/versions.sh" && agentscale_bin kubectl', "_", str(CLUSTER_DIR)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (subprocess.SubprocessError, OSError):
        cached = ""
    if cached and os.access(cached, os.X_OK):
        return cached
    found = shutil.which("kubectl")
    if found:
        return found
    raise pytest.UsageError("no kubectl: run e2e/cluster/build.sh or set AGENTSCALE_KUBECTL")


@dataclass(frozen=True)
class Kubectl:
    """Runs kubectl against one kubeconfig. Every call has a timeout; failures raise KubectlError."""

    binary: str
    kubeconfig: str
    timeout: float = 60.0

    def run(
        self, *args: str, input: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl and return the completed process without checking its exit code."""
        env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        return subprocess.run(
            [self.binary, *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout or self.timeout,
            check=False,
        )

    def __call__(self, *args: str, input: str | None = None, timeout: float | None = None) -> str:
        """Run kubectl and return stdout; raise KubectlError (with stderr) on a non-zero exit."""
        proc = self.run(*args, input=input, timeout=timeout)
        if proc.returncode != 0:
            raise KubectlError(args, proc.returncode, proc.stderr)
        return proc.stdout

    def json(self, *args: str, timeout: float | None = None) -> Any:
        """Run kubectl with ``-o json`` and return the parsed document."""
        return json.loads(self(*args, "-o", "json", timeout=timeout))

    def apply(self, *manifests: dict[str, Any], namespace: str | None = None) -> str:
        """``kubectl apply`` of manifests given as dicts (sent as a JSON List on stdin)."""
        doc = {"apiVersion": "v1", "kind": "List", "items": list(manifests)}
        ns = ["-n", namespace] if namespace else []
        return self("apply", *ns, "-f", "-", input=json.dumps(doc))


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 60.0,
    interval: float = 1.0,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that value.

    Exceptions raised by the predicate count as "not yet" (the last one is reported). Gives up
    after ``timeout`` seconds with an AssertionError naming ``message`` and the last result.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # a transient API error is just "not yet"
            last = exc
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}; last: {last!r}")
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))


def _kubeconfig_path() -> str:
    return os.environ.get("KUBECONFIG") or str(DEFAULT_KUBECONFIG)


@pytest.fixture(scope="session")
def kubeconfig() -> str:
    """Path of the kubeconfig under test; fails (not skips) when no cluster answers."""
    if not e2e_enabled():
        pytest.skip("AGENTSCALE_E2E=0: cluster tests disabled")
    path = _kubeconfig_path()
    hint = "start one with e2e/cluster/up.sh (or set AGENTSCALE_E2E=0 to skip cluster tests)"
    if ":" not in path and not Path(path).is_file():
        pytest.fail(f"no kubeconfig at {path}: {hint}", pytrace=False)
    try:
        probe = Kubectl(resolve_kubectl(), path, timeout=30).run(
            "get", "--raw", "/readyz", "--request-timeout=15s"
        )
        ready, detail = probe.returncode == 0 and probe.stdout.strip() == "ok", probe.stderr or probe.stdout
    except subprocess.TimeoutExpired:
        ready, detail = False, "kubectl timed out"
    if not ready:
        reason = f"no Kubernetes API server reachable with {path} ({detail.strip()}): {hint}"
        pytest.fail(reason, pytrace=False)
    return path


@pytest.fixture(scope="session")
def kubectl(kubeconfig: str) -> Kubectl:
    """A :class:`Kubectl` bound to the kubeconfig under test."""
    return Kubectl(resolve_kubectl(), kubeconfig)


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """The :func:`wait_for` polling helper, as a fixture."""
    return wait_for


@pytest.fixture
def namespace(kubectl: Kubectl, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test (labelled agentscale.io/e2e=true), deleted afterwards.

    Set AGENTSCALE_E2E_KEEP=1 to keep it for debugging.
    """
    slug = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"e2e-{slug}-{uuid.uuid4().hex[:6]}"
    kubectl.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {E2E_LABEL: "true"}}}
    )
    # Pods are refused until the namespace's default ServiceAccount exists.
    wait_for(
        lambda: kubectl.run("-n", name, "get", "serviceaccount", "default").returncode == 0,
        timeout=60,
        interval=0.5,
        message=f"ServiceAccount default in namespace {name}",
    )
    yield name
    if os.environ.get("AGENTSCALE_E2E_KEEP") != "1":
        # Retried: a test that restarts the control plane may leave the API server slow for a moment, and a
        # namespace left behind would hold up the tests that wait for every e2e namespace to be gone.
        for attempt in range(3):
            try:
                kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")
                break
            except (KubectlError, subprocess.TimeoutExpired):
                if attempt == 2:
                    raise
                time.sleep(5)
