"""Start real ``redis-server`` and ``tritonserver`` processes on loopback, for tests and benchmarks.

Nothing here runs in a pod. ``tritonserver`` is the binary shipped in the ``nvidia-pytriton`` wheel
(see docs/dataplane.md): its Python backend needs the stub for the running Python copied next to
``libtriton_python.so``, and its bundled shared libraries on ``LD_LIBRARY_PATH``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .models import MODEL_REPO, cpu_config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_port(port: int, proc: subprocess.Popen[bytes], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not open port {port} within {deadline_s}s")


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class RedisServer:
    """A real redis-server with append-only persistence in ``workdir``; restartable on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    appendfsync: str = "always"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if not binary:
            raise RuntimeError("redis-server not found: apt-get install redis-server")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        args += ["--appendonly", "yes", "--appendfsync", self.appendfsync, "--save", ""]
        args += ["--protected-mode", "no", "--loglevel", "warning"]
        log = open(self.workdir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, 20, "redis-server")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc:
            _stop(self.proc, sig)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def pytriton_root() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nvidia-pytriton is not installed (pip install nvidia-pytriton)")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def backend_dir(cache: Path | None = None) -> Path:
    """A backends folder whose python backend has the stub for this Python next to the library."""
    root = pytriton_root()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = (cache or Path(tempfile.gettempdir()) / f"agentscale-triton-backends-{ver}") / "python"
    stub = target / "triton_python_backend_stub"
    if not stub.exists():
        target.mkdir(parents=True, exist_ok=True)
        for f in (root / "backends" / "python").iterdir():
            if f.is_file():
                shutil.copy2(f, target / f.name)
        tmp = target / "stub.tmp"
        shutil.copy2(root / "python_backend_stubs" / ver / "triton_python_backend_stub", tmp)
        tmp.chmod(0o755)
        tmp.rename(stub)
    return target.parent


def model_site_path() -> str:
    """Site folders the Python-backend stub needs to import numpy and agentscale_worker from this venv."""
    paths = [sysconfig.get_paths()["purelib"], str(Path(__file__).resolve().parents[1])]
    return os.pathsep.join(paths)


@dataclass
class TritonServer:
    """A real tritonserver (CPU) serving ``models`` from the repository (all of them by default), each with
    the ``config.pbtxt`` the operator renders for it on a machine without a GPU (``models.cpu_config``) unless
    ``config_overrides`` names another (also rendered, by the callers in this repository)."""

    workdir: Path
    models: list[str] | None = None
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    repeat: int = 1
    config_overrides: dict[str, str] = field(default_factory=dict)  # model -> config.pbtxt text
    extra_args: list[str] = field(default_factory=list)  # more server arguments (e.g. --cache-config)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _repo(self) -> Path:
        repo = self.workdir / "models"
        repo.mkdir(parents=True, exist_ok=True)
        for model_dir in sorted(MODEL_REPO.iterdir()):
            name = model_dir.name
            if not (model_dir / "1" / "model.py").exists() or (self.models and name not in self.models):
                continue
            dst = repo / name
            (dst / "1").mkdir(parents=True, exist_ok=True)
            shutil.copy2(model_dir / "1" / "model.py", dst / "1" / "model.py")
            text = self.config_overrides.get(name) or cpu_config(name)
            (dst / "config.pbtxt").write_text(text)
        return repo

    def start(self, ready_timeout_s: float = 120) -> TritonServer:
        root = pytriton_root()
        libs = root.parents[1] / "nvidia_pytriton.libs"
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(libs), env.get("LD_LIBRARY_PATH")]))
        env["AGENTSCALE_MODEL_SITE"] = model_site_path()
        env["AGENTSCALE_MODEL_REPEAT"] = str(self.repeat)
        args = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self._repo()}",
            f"--backend-directory={backend_dir()}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--log-verbose=0",
            "--strict-readiness=true",
            f"--cache-directory={root / 'caches'}",  # the wheel's response cache (used with --cache-config)
            *self.extra_args,
        ]
        log = open(self.workdir / "triton.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready(ready_timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        import urllib.request

        assert self.proc is not None
        end = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.http_port}/v2/health/ready"
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                log = (self.workdir / "triton.log").read_text()[-3000:]
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready in {timeout_s}s; log in {self.workdir}/triton.log")

    def stop(self) -> None:
        if self.proc:
            _stop(self.proc, signal.SIGINT, timeout=30)
            self.proc = None


async def wait_until(predicate: object, timeout_s: float, interval_s: float = 0.02, what: str = "") -> None:
    """Poll ``predicate`` (sync or async callable) until true or raise TimeoutError; for tests."""
    end = time.monotonic() + timeout_s
    while True:
        value = predicate()  # type: ignore[operator]
        if asyncio.iscoroutine(value):
            try:  # a predicate that hangs must not outlive the deadline
                value = await asyncio.wait_for(value, max(0.5, end - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"condition check hung past {timeout_s}s: {what}") from None
        if value:
            return
        if time.monotonic() > end:
            raise TimeoutError(f"condition not met within {timeout_s}s: {what}")
        await asyncio.sleep(interval_s)
