#!/usr/bin/env bash
# One real kubelet node (CPU only) beside the kwok GPU pool of the local agentscale cluster.
#
#   e2e/cluster/node.sh up       # start (or reuse) the real node of $AGENTSCALE_CLUSTER_NAME; up.sh runs it
#   e2e/cluster/node.sh down     # stop it and remove everything it made; down.sh runs it
#   e2e/cluster/node.sh status   # is it running (exit 0) or not (exit 1)
#   e2e/cluster/node.sh check-clean   # exit 1 (and say what) if anything of this node is left on the machine
#   e2e/cluster/node.sh load-images   # build the project's images that changed and import them into the node
#
# The node is a network namespace of its own ("agentscale-<id>"), so several clusters on one machine (one per
# engineer or checkout) each get a real node without sharing anything machine-wide: containerd (its own
# socket, root and state under the node's folder), the CNI bridge, the pod network 10.88.0.0/24, kube-proxy's
# iptables chains, CoreDNS on port 53 and the kubelet's ports all live inside that namespace. The host side
# is one veth pair with a /30 from 10.250.0.0/16 (the node's InternalIP is the far end, which the API server
# dials for logs and exec) and one socat that forwards <host end>:<apiserver port> to the API server, which
# listens on 127.0.0.1 only. Pods' cgroups live under /agentscale-<id>/ (the kubelet's cgroupRoot), so the
# node's kubelet never sees another node's pods. Nothing leaves the machine: the namespace has no default
# route, no NAT and no path to any other interface.
#
# Components: kubelet + kube-proxy built from the control plane's module (build.sh node), CoreDNS (build.sh
# coredns), containerd + runc + CNI plugins from Debian (installed here if missing), the sandbox image built
# from node/pause.c with gcc -static and a busybox image from Debian's busybox-static, both written as OCI
# archives by node/oci_image.py, and the project's images (images/build.py, podman), all imported into
# containerd (no registry).
#
# This file holds the names, up, down and check-clean; the rest is in node/host.sh (packages, images,
# addresses, cgroups, certificates), node/configs.sh (the components' configuration files) and
# node/processes.sh (start, stop, health).
#
# Env (besides common.sh's): AGENTSCALE_REAL_NODE_NAME (default real-0), AGENTSCALE_NODE_NET (first two
# octets of the host-side /30s, default 10.250), AGENTSCALE_REAL_NODE_PROJECT_IMAGES=0 (a node with the pause
# and busybox images only: the e2e teardown test's second node, which runs busybox and need not wait the
# minute the Triton image takes to import).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
. "$HERE/common.sh"

log() { printf '[%s] node: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# --- names and paths ------------------------------------------------------------------------------------
NAME="$AGENTSCALE_CLUSTER_NAME"
NODE_NAME="${AGENTSCALE_REAL_NODE_NAME:-real-0}"
WORKDIR="$(realpath -m "$KWOK_WORKDIR")" # absolute, whether or not it exists yet
NODE_DIR="$WORKDIR/nodes/$NAME/$NODE_NAME"
NODE_ID="$(printf '%s' "$NODE_DIR" | sha256sum | cut -c1-8)"
NETNS="agentscale-$NODE_ID"       # network namespace (/run/netns/$NETNS)
CGROUP="agentscale-$NODE_ID"      # kubelet cgroupRoot, in every cgroup v1 hierarchy
HOST_VETH="asn$NODE_ID"           # host end of the veth pair (the node's end is eth0 in the namespace)
NETNAME="agentscale-$NODE_ID"     # CNI network name (host-local IPAM, CNI result cache)
BRIDGE="agentscale0"              # inside the namespace
POD_CIDR="10.88.0.0/24"           # inside the namespace; the same for every node
POD_GW="10.88.0.1"                # the bridge's address; CoreDNS answers here (kubelet clusterDNS)
NODE_NET="${AGENTSCALE_NODE_NET:-10.250}"
CLUSTER_PKI="$WORKDIR/clusters/$NAME/pki"
CTRD_SOCK="$NODE_DIR/containerd/containerd.sock"
PAUSE_IMAGE="registry.k8s.io/pause:3.10"
BUSYBOX_IMAGE="localhost/agentscale/busybox:local"
HOST_IP=none # set by allocate_net or read from the node's net.env
NODE_IP=none
MACHINE_STATE=/run/agentscale-nodes # machine-wide: allocation lock, saved kernel tunables
NODE_LABELS="agentscale.io/real-node=true,agentscale.io/pool=real"
NODE_TAINT_KEY="agentscale.io/real-node"
COMPONENTS=(socat-api socat-api-pods containerd kubelet kube-proxy coredns)
# The kubelet sets these machine-wide sysctls at start (protectKernelDefaults=false); we save the values
# first and put them back when the last real node on the machine stops.
KERNEL_TUNABLES=(vm/overcommit_memory vm/panic_on_oom kernel/panic kernel/panic_on_oops kernel/keys/root_maxkeys kernel/keys/root_maxbytes)

kubectl_bin="$(agentscale_bin kubectl)"
k() { "$kubectl_bin" --kubeconfig "$AGENTSCALE_KUBECONFIG" --request-timeout=10s "$@"; }
in_ns() { nsenter --net="/run/netns/$NETNS" -- "$@"; }

# wait_until <seconds> <description> <command...>
wait_until() {
  local deadline=$((SECONDS + $1)) what="$2"
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what (logs: $NODE_DIR/logs/)"
    sleep 1
  done
}

# The parts, by job (each only defines functions):
# shellcheck source=node/host.sh
. "$HERE/node/host.sh"
# shellcheck source=node/configs.sh
. "$HERE/node/configs.sh"
# shellcheck source=node/processes.sh
. "$HERE/node/processes.sh"

# --- up ------------------------------------------------------------------------------------------------
up() {
  [ "$(id -u)" = 0 ] || die "the real node needs root (containerd, network namespaces, cgroups)"
  k get --raw /readyz >/dev/null 2>&1 || die "the API server of $NAME does not answer (run up.sh)"
  if status; then
    log "reusing real node $NODE_NAME (namespace $NETNS, InternalIP $NODE_IP)"
    load_project_images
    return 0
  fi
  local start_s=$SECONDS
  [ ! -e "$NODE_DIR" ] && [ ! -e "/run/netns/$NETNS" ] || {
    log "real node $NODE_NAME is not healthy; recreating it"
    down quiet
  }
  ensure_packages
  "$HERE/build.sh" node coredns >/dev/null
  build_images
  mkdir -p "$NODE_DIR/logs" "$NODE_DIR/pids"
  API_PORT="$(api_port)"
  [ -n "$API_PORT" ] || die "no API server port in $AGENTSCALE_KUBECONFIG"
  echo "$API_PORT" >"$NODE_DIR/api-port"
  allocate_net
  make_cgroups
  make_certs
  write_configs
  save_kernel_tunables

  start socat-api host socat "TCP-LISTEN:$API_PORT,bind=$HOST_IP,reuseaddr,fork" "TCP:127.0.0.1:$API_PORT"
  # Pods reach the API server through the kubernetes Service: kube-proxy sends 10.96.0.1:443 to the
  # address the API server advertises (kwokctl's, nowhere on this machine), which inside the namespace is
  # a local address where a second socat hands the connection to the first.
  API_ADDR="$(k get endpointslice kubernetes -n default -o jsonpath='{.endpoints[0].addresses[0]}')"
  [ -n "$API_ADDR" ] || die "the kubernetes Service has no endpoint address"
  in_ns ip addr add "$API_ADDR/32" dev lo
  start socat-api-pods ns socat "TCP-LISTEN:$API_PORT,bind=$API_ADDR,reuseaddr,fork" "TCP:$HOST_IP:$API_PORT"
  start containerd ns /usr/bin/containerd --config "$NODE_DIR/containerd/config.toml"
  wait_until 30 "containerd" ctr --address "$CTRD_SOCK" version
  local tar
  for tar in "$PAUSE_TAR" "$BUSYBOX_TAR"; do
    ctr --address "$CTRD_SOCK" -n k8s.io images import "$tar" >/dev/null
  done
  if [ "${AGENTSCALE_REAL_NODE_PROJECT_IMAGES:-1}" = 0 ]; then
    log "not importing the project's images (AGENTSCALE_REAL_NODE_PROJECT_IMAGES=0): pause and busybox only"
  else
    load_project_images
  fi
  start kubelet ns "$(agentscale_bin kubelet)" --config="$NODE_DIR/kubelet.yaml" \
    --kubeconfig="$NODE_DIR/kubeconfig" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
    --root-dir="$NODE_DIR/kubelet" --cert-dir="$NODE_DIR/pki" --node-labels="$NODE_LABELS" --v=1
  start kube-proxy ns "$(agentscale_bin kube-proxy)" --config="$NODE_DIR/kube-proxy.yaml" --v=1
  start coredns ns "$(agentscale_bin coredns)" -conf "$NODE_DIR/Corefile"
  local deadline=$((SECONDS + 90))
  until node_ready; do
    alive "${COMPONENTS[@]}"
    [ $SECONDS -lt $deadline ] || die "timed out waiting for node $NODE_NAME Ready (logs: $NODE_DIR/logs/)"
    sleep 1
  done
  wait_until 30 "CoreDNS ready" in_ns curl -fsS http://127.0.0.1:8181/ready
  wait_until 30 "kube-proxy healthy" in_ns curl -fsS http://127.0.0.1:10256/healthz
  log "real node $NODE_NAME Ready in $((SECONDS - start_s))s (namespace $NETNS, InternalIP $NODE_IP, pods $POD_CIDR, DNS $POD_GW)"
}

# --- down ------------------------------------------------------------------------------------------------
down() {
  local quiet="${1:-}"
  if [ ! -e "$NODE_DIR" ] && [ ! -e "/run/netns/$NETNS" ] && [ -z "$(cgroup_dirs | while read -r d; do [ -d "$d" ] && echo x; done)" ]; then
    [ -n "$quiet" ] || log "no real node $NODE_NAME for cluster $NAME"
    restore_machine_state
    return 0
  fi
  [ "$(id -u)" = 0 ] || die "stopping the real node needs root"
  local start_s=$SECONDS
  HOST_IP=none
  # shellcheck source=/dev/null
  [ -s "$NODE_DIR/net.env" ] && . "$NODE_DIR/net.env"
  # Machine-wide leftovers keyed by our sandboxes and shims: containerd's shim sockets (in its fixed
  # /run/containerd/s/) and libcni's result cache (/var/lib/cni/results/<network>-<id>-<if>). Note
  # them before the shims go.
  local sockets="" ids="" f
  for f in "$NODE_DIR"/containerd/state/io.containerd.runtime.v2.task/*/*/address; do
    [ -f "$f" ] || continue
    sockets+=" $(sed 's#^unix://##' "$f")"
    ids+=" $(basename "$(dirname "$f")")"
  done
  kill_all
  # Mounts under the node's folder: the kubelet's root (rshared bind), volumes, container root
  # filesystems, pod network namespaces. Deepest first.
  local m
  local mounts
  mounts="$(awk -v d="$NODE_DIR" '$5 == d || index($5, d "/") == 1 {print length($5), $5}' /proc/self/mountinfo |
    sort -rn | cut -d' ' -f2-)"
  for m in $mounts; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  # The namespace holds the bridge, the pods' veth ends, kube-proxy's and CNI's iptables chains and the
  # conntrack table: deleting it removes them all (and the host end of the veth pair with it).
  if [ -e "/run/netns/$NETNS" ]; then
    in_ns "$(agentscale_bin kube-proxy)" --cleanup >/dev/null 2>&1 || true
    ip netns delete "$NETNS"
  fi
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    ip link show "$HOST_VETH" >/dev/null 2>&1 || break
    sleep 0.5
  done
  ip link delete "$HOST_VETH" 2>/dev/null || true
  local d
  while read -r d; do
    if [ -d "$d" ]; then find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
  done < <(cgroup_dirs)
  for m in $sockets; do case "$m" in /run/containerd/s/*) rm -f "$m" ;; esac; done
  for m in $ids; do rm -f "/var/lib/cni/results/cni-loopback-$m-lo"; done
  find /var/lib/cni/results -maxdepth 1 -name "$NETNAME-*" -delete 2>/dev/null || true
  find /var/log/containers -maxdepth 1 -type l -lname "$NODE_DIR/*" -delete 2>/dev/null || true
  rm -rf "$NODE_DIR"
  rmdir "$WORKDIR/nodes/$NAME" "$WORKDIR/nodes" 2>/dev/null || true
  restore_machine_state
  # The Node object (if the API server still answers): its pods are garbage-collected with it.
  k delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  [ -n "$quiet" ] || log "real node $NODE_NAME stopped and removed in $((SECONDS - start_s))s"
}

# --- check-clean --------------------------------------------------------------------------------------------
check_clean() {
  local left=() d pids
  HOST_IP=none
  [ ! -e "$NODE_DIR" ] || left+=("folder $NODE_DIR")
  [ ! -e "/run/netns/$NETNS" ] || left+=("network namespace $NETNS")
  ! ip link show "$HOST_VETH" >/dev/null 2>&1 || left+=("host interface $HOST_VETH")
  while read -r d; do [ ! -d "$d" ] || left+=("cgroup $d"); done < <(cgroup_dirs)
  pids="$(node_pids | sort -u | tr '\n' ' ')"
  [ -z "${pids// /}" ] || left+=("processes $pids")
  ! grep -qF "$NODE_DIR/" /proc/self/mountinfo || left+=("mounts under $NODE_DIR")
  ! ls /var/lib/cni/results/"$NETNAME"-* >/dev/null 2>&1 || left+=("CNI results $NETNAME-*")
  if [ ${#left[@]} -gt 0 ]; then
    printf 'left behind by real node %s: %s\n' "$NODE_NAME" "${left[*]}" >&2
    return 1
  fi
  echo "nothing of real node $NODE_NAME ($NETNS) is left on this machine"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  check-clean) check_clean ;;
  load-images) # build what changed and import it (the e2e operator fixture runs this before installing)
    status || die "real node $NODE_NAME is not running"
    load_project_images
    ;;
  env) # for tests: the node's names
    printf 'NODE_NAME=%s\nNODE_DIR=%s\nNETNS=%s\nCGROUP=%s\nHOST_VETH=%s\nNETNAME=%s\nBUSYBOX_IMAGE=%s\nPOD_CIDR=%s\n' \
      "$NODE_NAME" "$NODE_DIR" "$NETNS" "$CGROUP" "$HOST_VETH" "$NETNAME" "$BUSYBOX_IMAGE" "$POD_CIDR"
    ;;
  *)
    echo "usage: $0 up|down|status|check-clean|load-images|env" >&2
    exit 2
    ;;
esac
