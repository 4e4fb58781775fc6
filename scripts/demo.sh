#!/usr/bin/env bash
# `make demo`: a local demo cluster with a workflow under load (docs/demo.md).
#   1. bootstrap (apt + .venv), then a local Kubernetes cluster "agentscale-demo" (kwok GPU pool plus one
#      real kubelet node) that never collides with the test cluster "agentscale";
#   2. the project's images imported into the real node, the operator installed with the Helm chart in pods
#      there (with the chart's Redis; values charts/agentscale/ci/real-node-values.yaml), the three example
#      workflows in namespace "demo": shop-recs as real pods on the real node, the other two on the GPU pool;
#   3. Prometheus in a pod and the operator's resource controller reading it (shop-recs' steps in scaling mode
#      slo), an open-loop load for DEMO_SECONDS from a pod (a ramp from DEMO_RPS/2 to DEMO_RPS with a spike to
#      2 x DEMO_RPS), a live line every 5 s with each scaling decision and its reason, a summary, a PNG plot.
# Fallback, named with its reason: when the real node cannot start (not root, AGENTSCALE_REAL_NODE=0, or
# node.sh failed), the operator runs as a local process and shop-recs' data plane as local processes with
# the environment and Triton config the operator rendered (demo_local.py).
# Knobs: DEMO_SECONDS (90, 5..900), DEMO_RPS (20, 1..2000), DEMO_KEEP=1 (leave the cluster running).
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

DEMO_SECONDS="${DEMO_SECONDS:-90}"
# The resource controller's cycle in the demo (the chart's default is 15 s): short, so a 90 s load shows it.
DEMO_RC_CYCLE_SECONDS=5
DEMO_RPS="${DEMO_RPS:-20}"
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
OPERATOR_NS=agentscale-system
mkdir -p "$RUN"

OPERATOR_PID=""
DEMO_PY_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # demo.py first: on SIGTERM it deletes the load pod, or stops the load (summary printed) and then its
  # local data plane in the fallback.
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
    if [ "$MODE" = pods ]; then
      info "DEMO_KEEP=1: cluster $AGENTSCALE_CLUSTER_NAME left running, shop-recs' pods too"
    else
      info "DEMO_KEEP=1: cluster $AGENTSCALE_CLUSTER_NAME left running (the local processes were stopped)"
    fi
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

# The real node needs root (containerd, a network namespace, iptables); without it, or when it fails to
# start, the demo falls back to local processes and says why.
MODE=pods
FALLBACK_REASON=""
if [ "${AGENTSCALE_REAL_NODE:-1}" = 0 ]; then
  FALLBACK_REASON="AGENTSCALE_REAL_NODE=0 is set"
elif [ "$(id -u)" != 0 ]; then
  FALLBACK_REASON="not root (uid $(id -u)): the real node runs containerd, a network namespace and iptables"
fi
if [ -z "$FALLBACK_REASON" ]; then
  stage "local cluster $AGENTSCALE_CLUSTER_NAME (kube-apiserver, etcd, scheduler, kwok GPU nodes, a real kubelet node)"
  if ! e2e/cluster/up.sh 2>&1 | tee "$RUN/up.log"; then
    FALLBACK_REASON="e2e/cluster/up.sh could not start the cluster with its real node: $(grep -m1 'ERROR' "$RUN/up.log" | sed 's/^\[[0-9:]*\] //' || true) (log $RUN/up.log)"
  fi
fi
if [ -n "$FALLBACK_REASON" ]; then
  MODE=local
  stage "FALLBACK: shop-recs' data plane as local processes, because $FALLBACK_REASON"
  AGENTSCALE_REAL_NODE=0 e2e/cluster/up.sh
fi
KUBECTL="$(bash -c '. e2e/cluster/versions.sh; agentscale_bin kubectl')"
HELM="$(bash -c '. e2e/cluster/versions.sh; agentscale_bin helm')"
k() { "$KUBECTL" --kubeconfig "$AGENTSCALE_KUBECONFIG" "$@"; }
info "kubeconfig: $AGENTSCALE_KUBECONFIG"
k get nodes -L agentscale.io/pool --no-headers | awk '{printf "    node %-11s pool=%-9s %s\n", $1, $NF, $2}'

stage "CRD"
k apply --server-side --force-conflicts -f crds/ | sed 's/^/    /'
k wait --for=condition=Established crd/agentworkflows.agentscale.io --timeout=60s >/dev/null
if [ "$MODE" = pods ]; then
  stage "images on the real node (built by images/build.py when their inputs changed)"
  e2e/cluster/node.sh load-images 2>&1 | sed 's/^/    /'
  info "the node's containerd has this checkout's operator, worker, triton and redis images"
  k create namespace "$OPERATOR_NS" --dry-run=client -o yaml | k apply -f - >/dev/null
  k label namespace "$OPERATOR_NS" pod-security.kubernetes.io/enforce=restricted --overwrite >/dev/null
  stage "Prometheus for the resource controller (a pod on the real node scraping namespace $NS every 2 s)"
  PROM_URL="$(.venv/bin/python scripts/demo_prometheus.py "$OPERATOR_NS" "$NS" 2>&1 >"$RUN/prometheus.json")"
  k apply -f "$RUN/prometheus.json" | sed 's/^/    /'
  info "the operator reads it at $PROM_URL (operator.prometheusUrl), every ${DEMO_RC_CYCLE_SECONDS}s"
  stage "operator: helm upgrade --install (in pods on the real node, with the chart's Redis)"
  # The image key as a pod annotation: a rebuilt image (same tag) rolls the operator's pods.
  key="$(.venv/bin/python images/build.py key operator)"
  "$HELM" --kubeconfig "$AGENTSCALE_KUBECONFIG" upgrade --install agentscale charts/agentscale \
    --namespace "$OPERATOR_NS" --values charts/agentscale/ci/real-node-values.yaml \
    --set-string "podAnnotations.agentscale\.io/image-key=$key" \
    --set-string "operator.prometheusUrl=$PROM_URL" \
    --set "operator.extraEnv[0].name=AGENTSCALE_RC_CYCLE_SECONDS" \
    --set-string "operator.extraEnv[0].value=$DEMO_RC_CYCLE_SECONDS" \
    --wait --timeout 5m >"$RUN/helm.log"
  info "$(grep -E '^(NAME|STATUS|REVISION):' "$RUN/helm.log" | tr '\n' ' ')(notes: $RUN/helm.log)"
  k -n "$OPERATOR_NS" get pods -o wide --no-headers | awk '{printf "    %-40s %-8s %s\n", $1, $3, $7}'
  info "logs: kubectl -n $OPERATOR_NS logs deploy/agentscale"
else
  : >"$RUN/operator.log"
  .venv/bin/agentscale run --standalone >>"$RUN/operator.log" 2>&1 &
  OPERATOR_PID=$!
  echo "$OPERATOR_PID" >"$RUN/operator.pid"
  info "operator as a local process: pid $OPERATOR_PID, log $RUN/operator.log"
fi

stage "example workflows in namespace $NS"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null
for f in workloads/examples/*.yaml; do
  # With the real node, demo_pods.py applies shop-recs with its real-node override and tokens Secret.
  [ "$MODE" = pods ] && [ "$(basename "$f")" = recommendation.yaml ] && continue
  k apply -n "$NS" -f "$f" | sed 's/^/    /'
done

# demo.py: wait for Ready, show placement, put shop-recs under load, print the summary.
stage "shop-recs under load: $([ "$MODE" = pods ] && echo "a ramp to ${DEMO_RPS} req/s with a spike" || echo "${DEMO_RPS} req/s") for ${DEMO_SECONDS}s ($([ "$MODE" = pods ] && echo "pods on the real node" || echo "local processes"))"
export DEMO_KUBECTL="$KUBECTL" DEMO_NAMESPACE="$NS" DEMO_RUN_DIR="$RUN" DEMO_MODE="$MODE"
export DEMO_FALLBACK_REASON="$FALLBACK_REASON"
# Its own session: Ctrl-C reaches only this script, whose trap stops demo.py with SIGTERM, so the load
# stops first, the summary prints, then the data plane stops in order.
setsid .venv/bin/python scripts/demo.py &
DEMO_PY_PID=$!
wait "$DEMO_PY_PID"
