"""Start a real ``prometheus`` (Debian's package, installed by scripts/bootstrap.sh) on loopback, for tests
and benchmarks: a free port, a data folder of its own and a generated ``prometheus.yml``. Restartable on the
same port and data, so a test can take it away and bring it back. Nothing here runs in a pod."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .local import _stop, free_port


def prometheus_binary() -> str:
    binary = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else ""
    )
    if not binary:
        raise RuntimeError("prometheus not installed (apt-get install prometheus; scripts/bootstrap.sh does)")
    return binary


@dataclass
class PrometheusServer:
    """``scrape_configs``: the ``scrape_configs`` list of prometheus.yml, as plain data."""

    workdir: Path
    scrape_configs: list[dict[str, Any]]
    scrape_interval_s: float = 1.0
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    rules: dict[str, Any] | None = None
    """A rule file's content (``groups``), evaluated every scrape interval; None: no rules."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        interval = f"{max(1, round(self.scrape_interval_s * 1000))}ms"
        out: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": self.scrape_configs,
        }
        if self.rules is not None:
            out["rule_files"] = [str(self.workdir / "rules.yml")]
        return out

    def start(self, ready_timeout_s: float = 60) -> PrometheusServer:
        binary = prometheus_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(json.dumps(self.config(), indent=1))  # JSON is YAML
        if self.rules is not None:
            (self.workdir / "rules.yml").write_text(json.dumps(self.rules, indent=1))
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready(ready_timeout_s)
        return self

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.proc is not None
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                log = (self.workdir / "prometheus.log").read_text()[-3000:]
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{log}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"prometheus not ready in {timeout_s}s; log in {self.workdir}/prometheus.log")

    def stop(self) -> None:
        if self.proc:
            _stop(self.proc, signal.SIGTERM, timeout=30)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
