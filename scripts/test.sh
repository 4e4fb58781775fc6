#!/usr/bin/env bash
# The one test command (README, .ci/run): installs what it needs, then
#   1. lint and types (ruff check, ruff format --check, mypy)
#   2. operator tests (golden YAML, CRD drift, kubernetes-validate; signals against a real prometheus)
#   3. data-plane tests against a real tritonserver and real redis-server, side by side with 2.
#   4. the end-to-end suite against a real local cluster (kube-apiserver, etcd, controller-manager,
#      scheduler, metrics-server, kwok GPU nodes, one real kubelet node), which it builds (cached) and
#      starts in the background while 1-3 run, then stops (and checks the real node left nothing behind).
#      Part 1 (the tests that need no operator) runs beside 2-3 once the cluster is up; part 2 (the
#      operator suite) after everything else.
# Lines of the stages that run side by side are prefixed [cluster], [operator], [dataplane] and [e2e-1].
# Set AGENTSCALE_E2E=0 to skip stage 4 (for a quick local loop only: with CI=true it is an error, so CI can
# never pass with the cluster stage skipped).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ "${AGENTSCALE_E2E:-1}" = "0" ] && [ "${CI:-}" = "true" ]; then
  echo "AGENTSCALE_E2E=0 with CI=true: CI must run the end-to-end stage; unset AGENTSCALE_E2E." >&2
  exit 2
fi
if [ "${AGENTSCALE_REAL_NODE:-1}" = "0" ] && [ "${CI:-}" = "true" ]; then
  echo "AGENTSCALE_REAL_NODE=0 with CI=true: CI must run the real node's tests; unset AGENTSCALE_REAL_NODE." >&2
  exit 2
fi
T0=$SECONDS
stage() { printf '\n=== [%s +%ss] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - T0))" "$*"; }

# pytest, but "no tests ran" (exit 5) is a failure, never a silent pass.
run_pytest() {
  local rc=0
  .venv/bin/python -m pytest "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests for: $*" >&2
    return 1
  fi
  return "$rc"
}

stage "bootstrap"
scripts/bootstrap.sh

E2E="${AGENTSCALE_E2E:-1}"
UP_PID=""
cleanup() {
  local rc=$?
  # A stage failed while others still ran (the cluster starting, the unit stages, end-to-end part 1): let
  # them finish (they have their own timeouts), so that down.sh finds everything they started and nothing
  # goes on printing after this script has exited.
  wait 2>/dev/null || true
  stage "stopping the local cluster"
  e2e/cluster/down.sh || true
  # down.sh must leave nothing of the real node behind (processes, namespace, cgroups, mounts, chains).
  if [ "${AGENTSCALE_REAL_NODE:-1}" = 1 ] && ! e2e/cluster/node.sh check-clean; then
    echo "e2e/cluster/down.sh left parts of the real node behind" >&2
    [ "$rc" -ne 0 ] || rc=1
  fi
  exit "$rc"
}
# Each line of a stage that runs beside others carries its name.
tagged() { # tagged NAME COMMAND...: runs COMMAND, its output prefixed with [NAME]; returns its status
  local name="$1"
  shift
  (
    set -o pipefail
    "$@" 2>&1 | sed -u "s/^/[$name] /"
  )
}

if [ "$E2E" != "0" ]; then
  # The local cluster starts while lint and the unit and data-plane stages run: most of its start is waiting
  # (components, the real node) and importing images into the node's containerd.
  stage "local cluster: starting in the background (build or reuse cached binaries and images, start)"
  trap cleanup EXIT # also when up.sh or a stage fails half way: leave no processes behind
  tagged cluster e2e/cluster/up.sh &
  UP_PID=$!
fi

stage "lint and types"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy operator/agentscale workloads/agentscale_worker workloads/agentscale_harness images/build.py

# The operator and data-plane stages run side by side (their own Prometheus, Redis and Triton on free ports):
# much of each is waiting for scrapes and servers.
stage "operator tests (unit, and the resource controller's signals against a real prometheus) and data-plane tests (real tritonserver + redis-server), side by side"
export AGENTSCALE_REQUIRE_SERVICES=1 # a missing redis-server, prometheus or tritonserver fails, never skips
tagged operator run_pytest operator/tests -q -p no:cacheprovider --durations=10 &
OP_PID=$!
tagged dataplane run_pytest workloads/tests -q -p no:cacheprovider --durations=10 &
DP_PID=$!
# The end-to-end tests that need no operator (the cluster, the real node, the images, the chart's install and
# RBAC) start as soon as the cluster is ready, beside the unit stages; the operator suite runs after both, on
# its own (it restarts the operator and the control plane, and measures quiet minutes).
E2E_FIRST=(
  e2e/tests/test_cluster.py
  e2e/tests/test_real_node.py
  e2e/tests/test_images.py
  e2e/tests/test_chart_render.py
  e2e/tests/test_chart_install.py
)
E1_PID=""
if [ "$E2E" != "0" ]; then
  up_rc=0
  wait "$UP_PID" || up_rc=$?
  UP_PID=""
  if [ "$up_rc" -ne 0 ]; then
    echo "e2e/cluster/up.sh failed (exit $up_rc): its output is above, prefixed [cluster]" >&2
    exit "$up_rc"
  fi
  # shellcheck source=/dev/null
  . e2e/cluster/env.sh
  stage "local cluster ready; end-to-end part 1 (${E2E_FIRST[*]##*/}) starts beside the unit stages"
  tagged e2e-1 run_pytest "${E2E_FIRST[@]}" -v -p no:cacheprovider --durations=15 &
  E1_PID=$!
fi

op_rc=0
dp_rc=0
wait "$OP_PID" || op_rc=$?
wait "$DP_PID" || dp_rc=$?
stage "operator tests: exit $op_rc; data-plane tests: exit $dp_rc"
if [ "$op_rc" -ne 0 ] || [ "$dp_rc" -ne 0 ]; then
  exit 1
fi

if [ "$E2E" = "0" ]; then
  stage "end-to-end suite skipped (AGENTSCALE_E2E=0)"
  exit 0
fi

e1_rc=0
wait "$E1_PID" || e1_rc=$?
E1_PID=""
stage "end-to-end part 1: exit $e1_rc"
[ "$e1_rc" -eq 0 ] || exit 1

stage "end-to-end part 2: the operator suite (everything in e2e/tests but part 1)"
ignores=()
for f in "${E2E_FIRST[@]}"; do ignores+=("--ignore=$f"); done
run_pytest e2e/tests "${ignores[@]}" -v -p no:cacheprovider --durations=40

stage "all green in $((SECONDS - T0))s"
