#!/usr/bin/env bash
# `make demo`: a local demo cluster with a workflow under load (docs/demo.md).
#   1. bootstrap (apt + .venv), then a local Kubernetes cluster "agentscale-demo" (kwok GPU pool) that
#      never collides with the test cluster "agentscale";
#   2. the CRD, the operator as a local process, the three example workflows in namespace "demo";
#   3. shop-recs' real data plane as local processes (redis-server, tritonserver, step workers, gateway)
#      with the environment and Triton config the operator rendered;
#   4. an open-loop load for DEMO_SECONDS at DEMO_RPS, a live line every 5 s, a summary.
# Knobs: DEMO_SECONDS (60, 5..900), DEMO_RPS (100, 1..2000), DEMO_KEEP=1 (leave the cluster running).
# Everything it starts is stopped on exit (Ctrl-C included); re-running is safe.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
T0=$SECONDS
stage() { printf '\n=== [%s +%ss] %s\n' "$(date +%H:%M:%S)" "$((SECONDS - T0))" "$*"; }
info() { printf '    %s\n' "$*"; }
die() {
  printf 'demo: ERROR: %s\n' "$*" >&2
  exit 1
}

DEMO_SECONDS="${DEMO_SECONDS:-60}"
DEMO_RPS="${DEMO_RPS:-100}"
[[ "$DEMO_SECONDS" =~ ^[0-9]+$ ]] && [ "$DEMO_SECONDS" -ge 5 ] && [ "$DEMO_SECONDS" -le 900 ] ||
  die "DEMO_SECONDS must be an integer in 5..900 (got '$DEMO_SECONDS')"
[[ "$DEMO_RPS" =~ ^[0-9]+([.][0-9]+)?$ ]] || die "DEMO_RPS must be a number in 1..2000 (got '$DEMO_RPS')"
awk -v r="$DEMO_RPS" 'BEGIN { exit !(r >= 1 && r <= 2000) }' || die "DEMO_RPS must be in 1..2000 (got $DEMO_RPS)"
export DEMO_SECONDS DEMO_RPS

# Our own cluster: name, kwok workdir and kubeconfig differ from the test cluster's.
export AGENTSCALE_CLUSTER_NAME=agentscale-demo
export KWOK_WORKDIR="$ROOT/.cluster/agentscale-demo-kwok"
export AGENTSCALE_KUBECONFIG="$ROOT/.cluster/agentscale-demo.kubeconfig"
export KUBECONFIG="$AGENTSCALE_KUBECONFIG"
RUN="$ROOT/.run/demo"
NS=demo
mkdir -p "$RUN"

OPERATOR_PID=""
DEMO_PY_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # demo.py first (on SIGTERM it stops the load, prints the summary, stops its data plane).
  if [ -n "$DEMO_PY_PID" ] && kill -0 "$DEMO_PY_PID" 2>/dev/null; then
    kill -TERM "$DEMO_PY_PID" 2>/dev/null || true
    wait "$DEMO_PY_PID" 2>/dev/null || true
  fi
  stage "stopping what the demo started"
  if [ -n "$OPERATOR_PID" ] && kill -0 "$OPERATOR_PID" 2>/dev/null; then
    info "operator (pid $OPERATOR_PID)"
    kill -TERM "$OPERATOR_PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$OPERATOR_PID" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$OPERATOR_PID" 2>/dev/null || true
    wait "$OPERATOR_PID" 2>/dev/null || true
  fi
  rm -f "$RUN/operator.pid"
  if [ "${DEMO_KEEP:-0}" = "1" ]; then
    info "DEMO_KEEP=1: cluster $AGENTSCALE_CLUSTER_NAME left running (the local processes were stopped)"
    info "  use it:  KUBECONFIG=$AGENTSCALE_KUBECONFIG $KUBECTL get aw -n $NS"
    info "  stop it: AGENTSCALE_CLUSTER_NAME=$AGENTSCALE_CLUSTER_NAME KWOK_WORKDIR=$KWOK_WORKDIR \\"
    info "           AGENTSCALE_KUBECONFIG=$AGENTSCALE_KUBECONFIG e2e/cluster/down.sh"
  else
    info "cluster $AGENTSCALE_CLUSTER_NAME"
    # kwokctl logs JSON lines; keep down.sh's own lines only.
    e2e/cluster/down.sh 2>&1 | grep -v '^{"time"' | sed 's/^/    /' || true
  fi
  info "logs: $RUN/"
  if [ "$rc" -eq 0 ]; then
    stage "demo finished in $((SECONDS - T0))s"
  else
    stage "demo failed (exit $rc) after $((SECONDS - T0))s; logs in $RUN/"
  fi
  exit "$rc"
}
KUBECTL=kubectl
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A previous run that was killed hard (SIGKILL) may have left its operator behind: stop that one only.
if [ -s "$RUN/operator.pid" ]; then
  old="$(cat "$RUN/operator.pid")"
  if [ -r "/proc/$old/cmdline" ] && tr '\0' ' ' <"/proc/$old/cmdline" | grep -q "agentscale run --standalone"; then
    echo "demo: stopping the operator a previous demo left running (pid $old)"
    kill -TERM "$old" 2>/dev/null || true
    sleep 2
  fi
  rm -f "$RUN/operator.pid"
fi

stage "bootstrap (apt packages, .venv)"
scripts/bootstrap.sh

stage "local cluster $AGENTSCALE_CLUSTER_NAME (kube-apiserver, etcd, scheduler, kwok GPU nodes)"
e2e/cluster/up.sh
KUBECTL="$(bash -c '. e2e/cluster/versions.sh; agentscale_bin kubectl')"
k() { "$KUBECTL" --kubeconfig "$AGENTSCALE_KUBECONFIG" "$@"; }
info "kubeconfig: $AGENTSCALE_KUBECONFIG"
k get nodes -L agentscale.io/pool --no-headers | awk '{printf "    node %-11s pool=%-9s %s\n", $1, $NF, $2}'

stage "CRD and operator"
k apply --server-side --force-conflicts -f crds/ | sed 's/^/    /'
k wait --for=condition=Established crd/agentworkflows.agentscale.io --timeout=60s >/dev/null
: >"$RUN/operator.log"
.venv/bin/agentscale run --standalone >>"$RUN/operator.log" 2>&1 &
OPERATOR_PID=$!
echo "$OPERATOR_PID" >"$RUN/operator.pid"
info "operator pid $OPERATOR_PID, log $RUN/operator.log"

stage "example workflows in namespace $NS"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null
k apply -n "$NS" -f workloads/examples/ | sed 's/^/    /'

# demo.py: wait for Ready, show placement, run shop-recs' data plane under load, print the summary.
stage "shop-recs under load: ${DEMO_RPS} req/s for ${DEMO_SECONDS}s"
export DEMO_KUBECTL="$KUBECTL" DEMO_NAMESPACE="$NS" DEMO_RUN_DIR="$RUN" DEMO_OPERATOR_PID="$OPERATOR_PID"
# Its own session: Ctrl-C reaches only this script, whose trap stops demo.py with SIGTERM, so the load
# stops first, the summary prints, then the data plane stops in order.
setsid .venv/bin/python scripts/demo.py &
DEMO_PY_PID=$!
wait "$DEMO_PY_PID"
