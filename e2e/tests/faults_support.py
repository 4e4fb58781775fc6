"""Fault injection for the operator's e2e fault tests (test_faults_operator.py): a plain module.

- :class:`ControlPlane` stops and starts single processes of the local kwokctl cluster (binary runtime):
  kwokctl itself only starts and stops whole clusters, so this reads each component's binary, arguments and
  working directory from ``$KWOK_WORKDIR/clusters/<name>/kwok.yaml`` and its pid from ``pids/<name>.pid``,
  and writes the new pid back there (so ``e2e/cluster/down.sh`` still stops what was started here).
- :class:`Audit` reads the API server's audit log (enabled by the tests through extra flags): who wrote what.
- :class:`Proxy` sits between one operator process and the API server: ``down()`` cuts every connection and
  refuses new ones (a network partition of that process alone), ``up()`` lets it reconnect.
- :class:`Api` sends many requests fast over one keep-alive connection (kubectl starts a process per call).
- :class:`OperatorUnderTest` is one ``agentscale run`` process in one namespace, with its own Lease.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from operator_support import REPO

# What the operator writes and reports on, with the subresources it uses; kube-controller-manager's own
# deployments/status and pods stay out of the log (they would be most of it).
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
  resources:
  - group: ""
    resources: [services, serviceaccounts, configmaps, events]
  - group: apps
    resources: [deployments, deployments/scale]
  - group: networking.k8s.io
    resources: [networkpolicies]
  - group: policy
    resources: [poddisruptionbudgets]
  - group: autoscaling
    resources: [horizontalpodautoscalers]
  - group: agentscale.io
    resources: [agentworkflows, agentworkflows/status]
- level: Metadata
  verbs: [list]
  resources:
  - group: agentscale.io
    resources: [agentworkflows]
- level: None
"""

OPERATOR_AGENT_PREFIXES = ("kopf/", "Python/")  # kopf's watches and the operator's own aiohttp client


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().split(")")[-1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


class ControlPlane:
    """The processes of one kwokctl cluster (binary runtime), stoppable one at a time."""

    def __init__(self, cluster_dir: Path) -> None:
        self.dir = cluster_dir
        docs = yaml.safe_load_all((cluster_dir / "kwok.yaml").read_text())
        config = next(d for d in docs if d and d.get("kind") == "KwokctlConfiguration")
        self.components = {c["name"]: c for c in config["components"]}
        self.extra: dict[str, list[str]] = {}  # flags added by the tests, kept across restarts
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.RLock()
        self._held: set[str] = set()  # stopped on purpose: not revived
        self._supervising = threading.Event()
        self.revived: Counter[str] = Counter()

    @classmethod
    def find(cls) -> ControlPlane | None:
        """The cluster e2e/cluster/up.sh made (common.sh's defaults), or None (another kind of cluster)."""
        workdir = Path(os.environ.get("KWOK_WORKDIR") or REPO / ".cluster" / "kwok")
        name = os.environ.get("AGENTSCALE_CLUSTER_NAME") or "agentscale"
        path = workdir / "clusters" / name
        if not (path / "kwok.yaml").is_file() or not (path / "pids" / "kube-apiserver.pid").is_file():
            return None
        return cls(path)

    def pid(self, name: str) -> int:
        return int((self.dir / "pids" / f"{name}.pid").read_text().strip())

    def alive(self, name: str) -> bool:
        pid = self.pid(name)
        child = self._children.get(pid)
        return child.poll() is None if child is not None else _alive(pid)

    def supervise(self) -> None:
        """Start again, within a second, any component that exits without being stopped here, as the
        kubelet does for a control plane's static pods (kube-controller-manager and kube-scheduler exit
        when they cannot renew their leader Lease, which an API server or etcd outage causes)."""

        def loop() -> None:
            while self._supervising.is_set():
                with self._lock:
                    for name in self.components:
                        if name not in self._held and not self.alive(name):
                            self.revived[name] += 1
                            self.start(name)
                time.sleep(1)

        self._supervising.set()
        threading.Thread(target=loop, daemon=True, name="control-plane-supervisor").start()

    def unsupervise(self) -> None:
        self._supervising.clear()

    def stop(self, name: str, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s`` (as a kubelet does: kube-apiserver 1.34 here can hang in
        its graceful shutdown while clients hold watches open)."""
        with self._lock:
            self._held.add(name)
            self._stop(name, grace_s)

    def _stop(self, name: str, grace_s: float) -> None:
        pid = self.pid(name)
        child = self._children.pop(pid, None)

        def gone() -> bool:
            return child.poll() is not None if child is not None else not _alive(pid)

        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 30.0)):
            if gone():
                return
            os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while not gone() and time.monotonic() < deadline:
                time.sleep(0.1)
        assert gone(), f"{name} (pid {pid}) did not exit after SIGKILL"

    def start(self, name: str) -> None:
        with self._lock:
            self._held.discard(name)
            self._start(name)

    def _start(self, name: str) -> None:
        c = self.components[name]
        with (self.dir / "logs" / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [c["binary"], *c.get("args", []), *self.extra.get(name, [])],
                cwd=c.get("workDir") or self.dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # outlives the test run, as kwokctl's own processes do
            )
        self._children[proc.pid] = proc
        (self.dir / "pids" / f"{name}.pid").write_text(str(proc.pid))  # no newline: kwokctl parses it

    def restart(self, name: str, down_s: float = 0.0) -> None:
        """Stop, stay down ``down_s``, start again. Meanwhile the component's ports are held by listeners that
        close every connection (clients see the server gone): on a machine shared with other kwokctl
        clusters, a port left free for a second was taken by a cluster being created."""
        holders: list[_PortHolder] = []
        try:
            with self._lock:
                self._held.add(name)
                self._stop(name, 5.0)
                for port in self.components[name].get("ports", []):
                    holder = _PortHolder.hold(int(port["port"]))
                    if holder is not None:
                        holders.append(holder)
            time.sleep(down_s)
        finally:
            # Whatever happened above, the component runs again: one left down (etcd, once in CI, when its
            # port could not be held) hangs every later test's API call until the module's teardown.
            with self._lock:
                for holder in holders:
                    holder.close()
                self.start(name)

    def log_tail(self, name: str, lines: int = 20) -> str:
        text = (self.dir / "logs" / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # --- readiness

    def etcd_url(self) -> str:
        for arg in self.components["etcd"]["args"]:
            if arg.startswith("--advertise-client-urls="):
                return arg.split("=", 1)[1].split(",")[0]
        raise AssertionError("etcd has no --advertise-client-urls")

    def etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.etcd_url() + "/health", timeout=2) as resp:
                return bool(json.load(resp).get("health") == "true")
        except (OSError, ValueError):
            return False

    def etcd_compact(self) -> int:
        """Compact etcd at its current revision (through its JSON gateway); every older revision is gone."""

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            req = urllib.request.Request(
                self.etcd_url() + path, data=json.dumps(body).encode(), method="POST"
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                return dict(json.load(resp))

        key = base64.b64encode(b"/registry/").decode()
        revision = int(post("/v3/kv/range", {"key": key, "limit": 1})["header"]["revision"])
        post("/v3/kv/compaction", {"revision": str(revision), "physical": True})
        return revision


class _PortHolder:
    """Listens on a port and closes every connection at once, until closed."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.listen()
        threading.Thread(target=self._refuse, daemon=True).start()

    @classmethod
    def hold(cls, port: int, wait_s: float = 3.0) -> _PortHolder | None:
        """A holder on ``port``, or None when it stays unbindable for ``wait_s``: the stopped server's
        connections can keep it busy a moment after its exit (seen with etcd's peer port, "Address already in
        use"). Without a holder the port is merely free while the component is down."""
        deadline = time.monotonic() + wait_s
        while True:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old server's TIME_WAITs
            try:
                sock.bind(("127.0.0.1", port))
                return cls(sock)
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    print(f"port {port} not held while its server is down: {exc}", file=sys.stderr)
                    return None
                time.sleep(0.2)

    def _refuse(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# ------------------------------------------------------------------------------------------ audit log


@dataclass(frozen=True)
class AuditEvent:
    verb: str
    agent: str
    resource: str  # "deployments", "agentworkflows/status", ...
    name: str
    namespace: str
    code: int

    @property
    def by_operator(self) -> bool:
        return self.agent.startswith(OPERATOR_AGENT_PREFIXES)


class Audit:
    """The API server's audit log (JSON lines); ``mark()`` and ``since()`` cut out one test's requests."""

    def __init__(self, directory: Path) -> None:
        self.policy = directory / "audit-policy.yaml"
        self.policy.write_text(AUDIT_POLICY)
        self.log = directory / "audit.log"
        self.log.touch()

    def flags(self) -> list[str]:
        return [f"--audit-policy-file={self.policy}", f"--audit-log-path={self.log}", "--audit-log-maxsize=0"]

    def mark(self) -> int:
        return self.log.stat().st_size

    def since(self, offset: int, namespace: str) -> list[AuditEvent]:
        out = []
        with self.log.open("rb") as f:
            f.seek(offset)
            for line in f:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue  # a line being written
                ref = e.get("objectRef") or {}
                if ref.get("namespace") != namespace:
                    continue
                sub = ref.get("subresource")
                out.append(
                    AuditEvent(
                        verb=e["verb"],
                        agent=e.get("userAgent", ""),
                        resource=ref.get("resource", "") + (f"/{sub}" if sub else ""),
                        name=ref.get("name", ""),
                        namespace=namespace,
                        code=int((e.get("responseStatus") or {}).get("code", 0)),
                    )
                )
        return out


def operator_writes(events: Iterable[AuditEvent]) -> Counter[str]:
    """The operator's write requests by resource (events included)."""
    return Counter(e.resource for e in events if e.by_operator and e.verb != "list")


# ---------------------------------------------------------------------------------------------- proxy


class Proxy:
    """A TCP proxy to the API server for one process; ``down()`` partitions it, ``up()`` heals."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.open = True
        self.cuts = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self._lock:
            self._conns.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def down(self) -> None:
        self.open = False
        with self._lock:
            conns = list(self._conns)
        self.cuts += len(conns)
        for s in conns:
            self._close(s)

    def up(self) -> None:
        self.open = True

    def close(self) -> None:
        self.down()
        self.listener.close()

    def kubeconfig(self, original: str, directory: Path) -> str:
        """A copy of the kubeconfig whose server is this proxy (TLS passes through: same name, same cert)."""
        cfg = yaml.safe_load(Path(original).read_text())
        for cluster in cfg["clusters"]:
            cluster["cluster"]["server"] = f"https://127.0.0.1:{self.port}"
        path = directory / f"kubeconfig-proxy-{self.port}"
        path.write_text(yaml.safe_dump(cfg))
        return str(path)


def api_address(kubeconfig: str) -> tuple[str, int]:
    server = yaml.safe_load(Path(kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").rstrip("/").rpartition(":")
    return host, int(port)


# ------------------------------------------------------------------------------------------ fast client


class Api:
    """Requests over one keep-alive TLS connection with the kubeconfig's client certificate."""

    def __init__(self, kubeconfig: str) -> None:
        cfg = yaml.safe_load(Path(kubeconfig).read_text())
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        self.host, self.port = api_address(kubeconfig)
        self._dir = tempfile.TemporaryDirectory(prefix="faults-api-")
        d = Path(self._dir.name)
        (d / "ca.crt").write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        (d / "tls.crt").write_bytes(base64.b64decode(user["client-certificate-data"]))
        (d / "tls.key").write_bytes(base64.b64decode(user["client-key-data"]))
        self.ctx = ssl.create_default_context(cafile=str(d / "ca.crt"))
        self.ctx.load_cert_chain(str(d / "tls.crt"), str(d / "tls.key"))
        self.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=30)

    def request(self, method: str, path: str, body: Any = None, content_type: str = "") -> dict[str, Any]:
        headers = {"User-Agent": "agentscale-e2e-faults", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type or "application/json"
        self.conn.request(method, path, body=data, headers=headers)
        resp = self.conn.getresponse()
        text = resp.read()
        if resp.status >= 400:
            raise AssertionError(f"{method} {path}: {resp.status} {text[:500]!r}")
        return dict(json.loads(text)) if text else {}

    def create_workflow(self, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
        return self.request(
            "POST", f"/apis/agentscale.io/v1alpha1/namespaces/{namespace}/agentworkflows", doc
        )

    def merge_patch_workflow(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        path = f"/apis/agentscale.io/v1alpha1/namespaces/{namespace}/agentworkflows/{name}"
        return self.request("PATCH", path, patch, "application/merge-patch+json")

    def close(self) -> None:
        self.conn.close()
        self._dir.cleanup()


# ----------------------------------------------------------------------------------- operator process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorUnderTest:
    """``agentscale run`` in one namespace, as one pod of the chart would run it, with a short Lease (4 s)
    so that a replacement for a killed process leads soon."""

    LEASE = "e2e-faults"

    def __init__(
        self, name: str, kubeconfig: str, namespace: str, log_dir: Path, verbose: bool = False
    ) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        health = f"http://127.0.0.1:{_free_port()}/healthz"
        env = {
            **os.environ,
            "KUBECONFIG": kubeconfig,
            "PYTHONUNBUFFERED": "1",
            "POD_NAME": name,
            "AGENTSCALE_NAMESPACE": namespace,
            "AGENTSCALE_RC_LEASE_NAME": self.LEASE,
            "AGENTSCALE_RC_LEASE_DURATION_SECONDS": "4",
            "AGENTSCALE_RC_RENEW_DEADLINE_SECONDS": "3",
            "AGENTSCALE_RC_RETRY_PERIOD_SECONDS": "0.5",
            "AGENTSCALE_METRICS_PORT": str(_free_port()),
            "AGENTSCALE_STATUS_DEBOUNCE": "0.2",
        }
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "agentscale.cli", "run", "--standalone", "-n", namespace),
                    *("--liveness", health, *(["--verbose"] if verbose else [])),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{name} exited early:\n{self.log()[-4000:]}"
            try:
                with urllib.request.urlopen(health, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{name} did not serve /healthz in 60 s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def reconciles(self) -> int:
        """Reconciles in which this process applied or pruned something (workflow_controller's line)."""
        return sum(1 for line in self.log().splitlines() if ": applied " in line and ", pruned " in line)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
