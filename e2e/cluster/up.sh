#!/usr/bin/env bash
# Start (or reuse) the local agentscale cluster: a real kube-apiserver, etcd,
# kube-controller-manager, kube-scheduler and metrics-server run as local processes by
# `kwokctl --runtime binary`; kwok fakes the nodes in nodes.yaml (a GPU pool) and the pods
# bound to them; one real kubelet node (node.sh: containerd, CNI bridge, kube-proxy, CoreDNS, in a
# network namespace of its own) runs real containers. Everything stays on this machine; nothing is
# downloaded once built (the real node installs Debian packages the first time).
#
#   e2e/cluster/up.sh            # builds missing binaries first (see build.sh)
#   . e2e/cluster/env.sh         # then kubectl/helm 1.34 + KUBECONFIG in this shell
#
# Env: AGENTSCALE_KUBECONFIG (default <repo>/.cluster/kubeconfig), KWOK_WORKDIR
# (default <repo>/.cluster/kwok), AGENTSCALE_CACHE (binaries), AGENTSCALE_CLUSTER_NAME,
# AGENTSCALE_REAL_NODE=0 (no real node: a kwok-only cluster, e.g. without root).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$HERE/common.sh"

START=$SECONDS
log() { printf '[%s] up: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

REAL_NODE="${AGENTSCALE_REAL_NODE:-1}"
if [ "$REAL_NODE" = 1 ]; then
  "$HERE/build.sh" >/dev/null
else
  "$HERE/build.sh" kubernetes etcd kwok helm metrics-server >/dev/null
fi
PATH="$(agentscale_path)"
export PATH
kwokctl="$(agentscale_bin kwokctl)"
kubectl_bin="$(agentscale_bin kubectl)"
name="$AGENTSCALE_CLUSTER_NAME"
kc="$AGENTSCALE_KUBECONFIG"
k() { "$kubectl_bin" --kubeconfig "$kc" "$@"; }

mkdir -p "$(dirname "$kc")" "$KWOK_WORKDIR"

cluster_exists() { "$kwokctl" get clusters 2>/dev/null | grep -qx "$name"; }
healthy() { [ -s "$kc" ] && k get --raw /readyz --request-timeout=5s >/dev/null 2>&1; }

# wait_until <seconds> <description> <command...>: poll every 2s until the command succeeds.
wait_until() {
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what"
    sleep 2
  done
}

write_config() { # the KwokctlConfiguration plus kwok's metrics-usage objects
  cat <<CONF
apiVersion: config.kwok.x-k8s.io/v1alpha1
kind: KwokctlConfiguration
options:
  runtime: binary
  bindAddress: 127.0.0.1
  kubeVersion: $KUBE_VERSION
  etcdVersion: ${ETCD_VERSION#v}
  kwokVersion: $KWOK_VERSION
  metricsServerVersion: $METRICS_SERVER_VERSION
  kubeApiserverBinary: $(agentscale_bin kube-apiserver)
  kubeControllerManagerBinary: $(agentscale_bin kube-controller-manager)
  kubeSchedulerBinary: $(agentscale_bin kube-scheduler)
  kubectlBinary: $kubectl_bin
  etcdBinary: $(agentscale_bin etcd)
  kwokControllerBinary: $(agentscale_bin kwok)
  metricsServerBinary: $(agentscale_bin metrics-server)
  metricsServerManifests:
  - $HERE/metrics-server
  enable:
  - metrics-server
  cacheDir: $KWOK_WORKDIR/cache
  quietPull: true
componentsPatches:
# Headroom for benchmarks that create ~10k objects: API priority and fairness stays on
# (as in real clusters) with a larger total concurrency, and the controller-manager and
# scheduler may talk faster than their defaults (20 and 50 qps). The service range is a /16
# (the apiserver's default is a /24: only 254 ClusterIP Services).
#
# The real node (node.sh): the API server dials kubelets by InternalIP (the default prefers Hostname,
# which nothing resolves here) and presents the admin client certificate, which the real kubelet
# checks against the cluster CA (kwok's own kubelet stand-in ignores it). kwok manages only the nodes
# annotated kwok.x-k8s.io/node=fake (nodes.yaml), never the real node or its pods.
- name: kube-apiserver
  extraArgs:
  - key: service-cluster-ip-range
    value: 10.96.0.0/16
  - key: kubelet-preferred-address-types
    value: InternalIP,ExternalIP,Hostname
  - key: kubelet-client-certificate
    value: $KWOK_WORKDIR/clusters/$name/pki/admin.crt
  - key: kubelet-client-key
    value: $KWOK_WORKDIR/clusters/$name/pki/admin.key
  - key: max-requests-inflight
    value: "1000"
  - key: max-mutating-requests-inflight
    value: "500"
- name: kube-controller-manager
  extraArgs:
  - key: kube-api-qps
    value: "200"
  - key: kube-api-burst
    value: "400"
  - key: concurrent-deployment-syncs
    value: "10"
  - key: concurrent-replicaset-syncs
    value: "10"
  - key: horizontal-pod-autoscaler-sync-period
    value: "15s"
- name: kube-scheduler
  extraArgs:
  - key: kube-api-qps
    value: "200"
  - key: kube-api-burst
    value: "400"
- name: kwok-controller
  extraArgs:
  - key: manage-all-nodes
    value: "false"
  - key: manage-nodes-with-annotation-selector
    value: kwok.x-k8s.io/node=fake
---
CONF
  grep -v '^#' "$HERE/kwok-metrics-usage.yaml"
}

create_cluster() {
  local cfg="$KWOK_WORKDIR/agentscale-kwokctl.yaml"
  write_config >"$cfg"
  # kwokctl caches fetched manifests by source path; drop them so edits to metrics-server/ apply.
  rm -rf "$KWOK_WORKDIR/cache/manifest"
  log "creating cluster $name (kube $KUBE_VERSION, etcd $ETCD_VERSION, kwok $KWOK_VERSION) in $KWOK_WORKDIR"
  "$kwokctl" create cluster --name "$name" --config "$cfg" --kubeconfig "$kc" --wait 3m
}

if cluster_exists && [ "$REAL_NODE" = 1 ] &&
  ! grep -q 'manage-nodes-with-annotation-selector' "$KWOK_WORKDIR/clusters/$name/kwok.yaml" 2>/dev/null; then
  # Made before the real node existed: its kwok manages every node and would fight the kubelet.
  log "cluster $name was created by an older up.sh (kwok manages all nodes); recreating it"
  "$HERE/node.sh" down || true
  "$kwokctl" delete cluster --name "$name" --kubeconfig "$kc" || true
fi

if cluster_exists; then
  "$kwokctl" get kubeconfig --name "$name" >"$kc.tmp" 2>/dev/null && mv "$kc.tmp" "$kc"
  if ! healthy; then
    log "cluster $name exists but is not answering; starting its components"
    "$kwokctl" start cluster --name "$name" >/dev/null 2>&1 || true
    deadline=$((SECONDS + 60))
    while ! healthy && [ $SECONDS -lt $deadline ]; do sleep 2; done
  fi
  if healthy; then
    log "reusing running cluster $name"
  else
    log "cluster $name is broken; recreating it"
    "$HERE/node.sh" down || true
    "$kwokctl" delete cluster --name "$name" --kubeconfig "$kc" || true
    create_cluster
  fi
else
  create_cluster
fi

"$kwokctl" get kubeconfig --name "$name" >"$kc.tmp" && mv "$kc.tmp" "$kc"
chmod 600 "$kc"
wait_until 60 "kube-apiserver /readyz" k get --raw /readyz

# --- the API server's certificate names its Service address ---
# Pods reach the API server as https://10.96.0.1 (the kubernetes Service, KUBERNETES_SERVICE_HOST), and
# clients in them check that address against the serving certificate, as on any cluster (kubeadm puts it
# there). kwokctl's certificate lacks it, so with a real node it is re-issued once, with the same key,
# subject and names plus the Service address, by the cluster's own CA; then the components restart on it.
service_san() {
  local pki="$KWOK_WORKDIR/clusters/$name/pki" svc_ip sans tmp
  svc_ip="$(k get service kubernetes -n default -o jsonpath='{.spec.clusterIP}')"
  [ -n "$svc_ip" ] || die "the kubernetes Service has no clusterIP"
  sans="$(openssl x509 -in "$pki/admin.crt" -noout -ext subjectAltName | tail -n +2 | tr -d ' ' | sed 's/IPAddress:/IP:/g')"
  case ",$sans," in *",IP:$svc_ip,"*) return 0 ;; esac
  log "adding the kubernetes Service address $svc_ip to the API server's certificate; restarting the cluster's components"
  tmp="$(mktemp -d)"
  openssl req -new -key "$pki/admin.key" -subj "$(openssl x509 -in "$pki/admin.crt" -noout -subject -nameopt compat | sed 's/^subject=//')" -out "$tmp/csr" 2>/dev/null
  printf 'subjectAltName=%s,IP:%s\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' \
    "$sans" "$svc_ip" >"$tmp/ext"
  openssl x509 -req -in "$tmp/csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -CAserial "$tmp/serial" \
    -days 36500 -extfile "$tmp/ext" -out "$tmp/crt" 2>/dev/null
  cp "$tmp/crt" "$pki/admin.crt"
  rm -rf "$tmp"
  "$kwokctl" stop cluster --name "$name" >/dev/null 2>&1 || true
  "$kwokctl" start cluster --name "$name" >/dev/null 2>&1 || true
  "$kwokctl" get kubeconfig --name "$name" >"$kc.tmp" && mv "$kc.tmp" "$kc"
  chmod 600 "$kc"
  wait_until 60 "kube-apiserver /readyz" k get --raw /readyz
}
if [ "$REAL_NODE" = 1 ]; then service_san; fi

# --- the fake GPU pool ---
log "applying fake nodes from nodes.yaml"
k apply -f "$HERE/nodes.yaml" >/dev/null
# Capacity/allocatable only change through the status subresource once a node exists.
k create --dry-run=client -o json -f "$HERE/nodes.yaml" | python3 -c '
import json, re, sys
text, decoder, space = sys.stdin.read(), json.JSONDecoder(), re.compile(r"\s*")
pos = space.match(text).end()
while pos < len(text):  # kubectl prints one JSON object per node, back to back
    node, pos = decoder.raw_decode(text, pos)
    pos = space.match(text, pos).end()
    status = {key: node["status"][key] for key in ("capacity", "allocatable")}
    print(node["metadata"]["name"], json.dumps({"status": status}))
' | while read -r node patch; do
  k patch node "$node" --subresource=status --type=merge -p "$patch" >/dev/null
done

k wait --for=condition=Ready node -l agentscale.io/fake-node=true --timeout=120s >/dev/null ||
  die "kwok nodes did not become Ready"
wait_until 60 "default ServiceAccount" k -n default get serviceaccount default
# metrics-server exits for good when it starts before kube-apiserver listens ("connection refused" panic, seen
# once in CI) and kwokctl does not restart it; a stop + start of the cluster's components brings it back.
metrics_server_running() { pgrep -f "$KWOK_WORKDIR/clusters/$name/bin/metrics-server" >/dev/null; }
for attempt in 1 2 3; do
  if ! metrics_server_running; then
    log "metrics-server is not running (it raced kube-apiserver at start); restarting the cluster's components"
    "$kwokctl" stop cluster --name "$name" >/dev/null 2>&1 || true
    "$kwokctl" start cluster --name "$name" >/dev/null 2>&1 || true
    wait_until 60 "kube-apiserver /readyz" k get --raw /readyz
  fi
  k wait --for=condition=Available apiservice/v1beta1.metrics.k8s.io --timeout=60s >/dev/null 2>&1 && break
  [ "$attempt" = 3 ] &&
    die "metrics-server APIService did not become Available (see $KWOK_WORKDIR/clusters/$name/logs)"
done

# --- the real node ---
if [ "$REAL_NODE" = 1 ]; then
  real_start=$SECONDS
  "$HERE/node.sh" up || die "the real node did not start (logs: $KWOK_WORKDIR/nodes/$name/*/logs/; AGENTSCALE_REAL_NODE=0 starts without it)"
  log "real node: $((SECONDS - real_start))s"
else
  log "no real node (AGENTSCALE_REAL_NODE=0)"
fi

log "cluster $name ready in $((SECONDS - START))s; $(k get nodes --no-headers | wc -l) nodes"
log "kubeconfig: $kc  (. e2e/cluster/env.sh to use kubectl $KUBE_VERSION and helm)"
