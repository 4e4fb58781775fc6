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
# archives by node/oci_image.py and imported into containerd (no registry, no podman).
#
# Env (besides common.sh's): AGENTSCALE_REAL_NODE_NAME (default real-0), AGENTSCALE_NODE_NET (first two
# octets of the host-side /30s, default 10.250).
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

# --- machine prerequisites (Debian packages, idempotent) --------------------------------------------------
ensure_packages() {
  local missing=() pkg
  # package:file that proves it is installed
  for pkg in containerd:/usr/bin/containerd runc:/usr/sbin/runc \
    containernetworking-plugins:/usr/lib/cni/bridge iptables:/usr/sbin/iptables socat:/usr/bin/socat \
    busybox-static:/bin/busybox gcc:/usr/bin/gcc libc6-dev:/usr/lib/x86_64-linux-gnu/libc.a \
    openssl:/usr/bin/openssl util-linux:/usr/bin/nsenter iproute2:/usr/sbin/ip \
    podman:/usr/bin/podman debootstrap:/usr/sbin/debootstrap; do
    [ -e "${pkg#*:}" ] || missing+=("${pkg%%:*}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get -o DPkg::Lock::Timeout=300 install -y --no-install-recommends "${missing[@]}")
  mkdir -p "$MACHINE_STATE"
  (
    flock 9 # two clusters starting at once install once
    if ! "${apt[@]}" >/dev/null 2>&1; then
      apt-get -o DPkg::Lock::Timeout=300 update -qq && "${apt[@]}" >/dev/null
    fi
  ) 9>"$MACHINE_STATE/apt.lock"
  # Debian starts containerd as a system service on install; the real node runs its own instance and
  # nothing else here needs the system one.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet containerd 2>/dev/null; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
  fi
}

# --- images (cached by content outside the checkout) ------------------------------------------------------
IMAGES="$AGENTSCALE_CACHE/images"
build_images() {
  mkdir -p "$IMAGES" "$AGENTSCALE_CACHE/locks"
  exec 7>"$AGENTSCALE_CACHE/locks/node-images.lock"
  flock 7 # one builder at a time
  local key tmp
  key="$(cat "$HERE/node/pause.c" "$HERE/node/oci_image.py" | sha256sum | cut -c1-12)"
  PAUSE_TAR="$IMAGES/pause-3.10-$key.tar"
  if [ ! -s "$PAUSE_TAR" ]; then
    tmp="$(mktemp -d)"
    mkdir -p "$tmp/rootfs"
    gcc -static -O2 -s -o "$tmp/rootfs/pause" "$HERE/node/pause.c"
    python3 "$HERE/node/oci_image.py" "$tmp/rootfs" "$PAUSE_IMAGE" "$PAUSE_TAR" --entrypoint /pause >/dev/null
    rm -rf "$tmp"
    log "built $PAUSE_IMAGE ($PAUSE_TAR)"
  fi
  key="$( (dpkg-query -W -f '${Version}' busybox-static; cat "$HERE/node/oci_image.py") | sha256sum | cut -c1-12)"
  BUSYBOX_TAR="$IMAGES/busybox-$key.tar"
  if [ ! -s "$BUSYBOX_TAR" ]; then
    tmp="$(mktemp -d)"
    local r="$tmp/rootfs" applet
    mkdir -p "$r/bin" "$r/etc" "$r/tmp" "$r/root" "$r/var/www"
    cp /bin/busybox "$r/bin/busybox"
    for applet in $("$r/bin/busybox" --list); do
      [ "$applet" = busybox ] || ln -s busybox "$r/bin/$applet"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
    chmod 1777 "$r/tmp"
    python3 "$HERE/node/oci_image.py" "$r" "$BUSYBOX_IMAGE" "$BUSYBOX_TAR" --cmd /bin/sh >/dev/null
    rm -rf "$tmp"
    log "built $BUSYBOX_IMAGE ($BUSYBOX_TAR)"
  fi
  exec 7>&-
}

# The project's images (operator, worker, triton, redis): built by images/build.py when their inputs changed
# (cached by content under $AGENTSCALE_CACHE/images), imported when the node does not have that build yet.
load_project_images() {
  python3 "$AGENTSCALE_REPO/images/build.py" load --address "$CTRD_SOCK" --state "$NODE_DIR/images" ||
    die "the project's images did not build or load (images/build.py; build logs in $AGENTSCALE_CACHE/images/)"
}

# --- the host side: addresses, namespace, cgroups, certificates ------------------------------------------
api_port() { k config view --minify -o jsonpath='{.clusters[0].cluster.server}' | sed 's#.*:\([0-9]*\)/*$#\1#'; }

# allocate_net: a /30 for this node's veth pair, free on this host (machine-wide lock).
allocate_net() {
  mkdir -p "$MACHINE_STATE"
  exec 8>"$MACHINE_STATE/net.lock"
  flock 8
  local slot tries=0 a b
  slot=$((0x${NODE_ID:0:4} % 16384))
  while :; do
    a=$((slot / 64))
    b=$((slot % 64 * 4))
    HOST_IP="$NODE_NET.$a.$((b + 1))"
    NODE_IP="$NODE_NET.$a.$((b + 2))"
    ip -o -4 addr show | grep -qE " ($HOST_IP|$NODE_IP)/" || break
    slot=$(((slot + 1) % 16384))
    tries=$((tries + 1))
    [ $tries -lt 16384 ] || die "no free /30 in $NODE_NET.0.0/16"
  done
  ip netns add "$NETNS"
  in_ns ip link set lo up
  ip link add "$HOST_VETH" type veth peer name eth0 netns "$NETNS"
  ip addr add "$HOST_IP/30" dev "$HOST_VETH"
  ip link set "$HOST_VETH" up
  in_ns ip addr add "$NODE_IP/30" dev eth0
  in_ns ip link set eth0 up
  flock -u 8
  exec 8>&-
  # Inside the namespace only: route between the bridge and the pods, and let iptables see bridged
  # traffic (a ClusterIP reply from a pod on the same bridge must be un-NATed).
  in_ns sysctl -qw net.ipv4.ip_forward=1
  if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    in_ns sysctl -qw net.bridge.bridge-nf-call-iptables=1
  else
    modprobe br_netfilter 2>/dev/null || log "WARNING: br_netfilter is not loaded: Services between pods may fail"
  fi
  printf 'HOST_IP=%s\nNODE_IP=%s\n' "$HOST_IP" "$NODE_IP" >"$NODE_DIR/net.env"
}

cgroup_dirs() { # this node's folder in every cgroup hierarchy (v1 controllers, name=systemd, unified)
  local m
  for m in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [ -e "$m/cgroup.procs" ] || continue
    echo "${m%/}/$CGROUP"
  done
}

make_cgroups() {
  local d parent f
  while read -r d; do
    mkdir -p "$d"
    parent="$(dirname "$d")"
    # cpuset: a new group starts with no CPUs and no memory nodes; give it its parent's.
    for f in cpuset.cpus cpuset.mems; do
      if [ -e "$d/$f" ] && [ -z "$(cat "$d/$f")" ]; then cat "$parent/$f" >"$d/$f"; fi
    done
  done < <(cgroup_dirs)
}

make_certs() {
  local pki="$NODE_DIR/pki"
  mkdir -p "$pki"
  [ -f "$CLUSTER_PKI/ca.crt" ] && [ -f "$CLUSTER_PKI/ca.key" ] || die "cluster CA not found in $CLUSTER_PKI"
  cp "$CLUSTER_PKI/ca.crt" "$pki/ca.crt" # the kubelet accepts clients (the API server) signed by it
  # The kubelet's serving certificate, signed by the cluster CA, valid for the node's address.
  openssl req -new -newkey rsa:2048 -nodes -keyout "$pki/kubelet.key" -subj "/CN=system:node:$NODE_NAME/O=system:nodes" \
    -out "$pki/kubelet.csr" 2>/dev/null
  openssl x509 -req -in "$pki/kubelet.csr" -CA "$CLUSTER_PKI/ca.crt" -CAkey "$CLUSTER_PKI/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -out "$pki/kubelet.crt" \
    -extfile <(printf 'subjectAltName=IP:%s,IP:127.0.0.1,DNS:%s\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n' "$NODE_IP" "$NODE_NAME") \
    2>/dev/null
  # The node's components reach the API server through the socat on the host end of the veth; the API
  # server's certificate does not name that address, so they verify it under a name it does carry.
  local tls_name
  tls_name="$(openssl x509 -in "$CLUSTER_PKI/admin.crt" -noout -ext subjectAltName 2>/dev/null | tr ',' '\n' |
    sed -n 's/^ *IP Address:127\.0\.0\.1$/127.0.0.1/p; s/^ *DNS:localhost$/localhost/p' | head -1)"
  [ -n "$tls_name" ] || die "the API server certificate ($CLUSTER_PKI/admin.crt) names neither 127.0.0.1 nor localhost"
  local kc="$NODE_DIR/kubeconfig" cluster
  k config view --minify --flatten >"$kc"
  chmod 600 "$kc"
  cluster="$("$kubectl_bin" --kubeconfig "$kc" config view -o jsonpath='{.clusters[0].name}')"
  "$kubectl_bin" --kubeconfig "$kc" config set-cluster "$cluster" \
    --server="https://$HOST_IP:$API_PORT" --tls-server-name="$tls_name" >/dev/null
}

# --- configuration files ------------------------------------------------------------------------------
write_configs() {
  local d="$NODE_DIR"
  mkdir -p "$d/containerd" "$d/cni" "$d/cni-ipam" "$d/kubelet" "$d/pod-logs" "$d/volume-plugins"
  cat >"$d/containerd/config.toml" <<EOF
# containerd for the real node $NODE_NAME of cluster $NAME (e2e/cluster/node.sh); nothing outside $d.
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "$CTRD_SOCK"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "$d/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine's root lacks CAP_SYS_RESOURCE: never ask for an oom_score_adj below ours.
  restrict_oom_score_adj = true
  # Pod network namespaces are bind-mounted under the state folder, not /run/netns.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$d/containerd/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni"
    max_conf_num = 1
EOF
  cat >"$d/cni/10-agentscale.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "$NETNAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$POD_GW"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$d/cni-ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
  cat >"$d/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $d/pki/kubelet.crt
tlsPrivateKeyFile: $d/pki/kubelet.key
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: $d/pki/ca.crt
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://$CTRD_SOCK
imageServiceEndpoint: unix://$CTRD_SOCK
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
cgroupsPerQOS: true
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS:
- $POD_GW
resolvConf: ""
podLogsDir: $d/pod-logs
volumePluginDir: $d/volume-plugins
registerWithTaints:
- key: $NODE_TAINT_KEY
  value: "true"
  effect: NoSchedule
maxPods: 110
# Lowering the kubelet's own oom_score_adj (default -999) needs CAP_SYS_RESOURCE, which root lacks here.
oomScoreAdj: 0
serializeImagePulls: false
# Images come from local archives, not a registry: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 2%
  nodefs.inodesFree: 2%
  imagefs.available: 2%
shutdownGracePeriod: 0s
EOF
  cat >"$d/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: $d/kubeconfig
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
# Leave the machine's conntrack settings alone (they are not ours to change).
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
EOF
  cat >"$d/Corefile" <<EOF
# Cluster DNS for pods on $NODE_NAME: Service and pod names only (nothing is forwarded off the machine).
.:53 {
    errors
    health 127.0.0.1:8080
    ready 127.0.0.1:8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $d/kubeconfig
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
    cache 5
}
EOF
}

# --- processes ---------------------------------------------------------------------------------------
# start <component> host|ns <command...>: a daemon in its own session, logs and pid in the node's folder.
start() {
  local comp="$1" where="$2"
  shift 2
  if [ "$where" = ns ]; then set -- nsenter --net="/run/netns/$NETNS" -- "$@"; fi
  setsid "$@" </dev/null >>"$NODE_DIR/logs/$comp.log" 2>&1 &
  echo $! >"$NODE_DIR/pids/$comp.pid"
}

# our_pid <component>: its pid, if that process is alive and still ours (guards against pid reuse).
our_pid() {
  local f="$NODE_DIR/pids/$1.pid" pid
  [ -s "$f" ] || return 1
  pid="$(cat "$f")"
  [ -r "/proc/$pid/cmdline" ] || return 1
  { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -e "$NODE_DIR/" -e "bind=$HOST_IP," -e "TCP:$HOST_IP:" || return 1
  echo "$pid"
}

# node_pids: every process whose command line names this node's folder (containerd, its shims, kubelet,
# kube-proxy, CoreDNS) plus the socat, and every process in the node's cgroups (the containers).
node_pids() {
  local p cmd d
  for p in /proc/[0-9]*; do
    [ "${p#/proc/}" != "$$" ] || continue
    cmd="$({ tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null)" || continue
    case "$cmd" in *"$NODE_DIR/"*) echo "${p#/proc/}" ;; esac
  done
  our_pid socat-api 2>/dev/null || true
  our_pid socat-api-pods 2>/dev/null || true
  while read -r d; do
    if [ -d "$d" ]; then find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null || true; fi
  done < <(cgroup_dirs)
  return 0
}

kill_all() {
  # The daemons get SIGTERM, kubelet first (so it does not restart what goes next); a container's PID 1
  # ignores SIGTERM from outside its namespace unless it handles it, and everything here is thrown away,
  # so what is left then gets SIGKILL until nothing of the node runs.
  local c pid pids i
  for c in kubelet kube-proxy coredns socat-api-pods socat-api containerd; do
    pid="$(our_pid "$c" 2>/dev/null)" && kill "$pid" 2>/dev/null || true
  done
  sleep 1
  for i in $(seq 1 20); do
    pids="$(node_pids | sort -u)"
    [ -n "$pids" ] || return 0
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.5
  done
  log "WARNING: processes still running after SIGKILL: $(node_pids | sort -u | tr '\n' ' ')"
}

alive() { # alive <component...>: each is running; otherwise stop waiting and say where to look
  local c
  for c in "$@"; do
    our_pid "$c" >/dev/null || die "$c exited; last lines of $NODE_DIR/logs/$c.log:
$(tail -n 5 "$NODE_DIR/logs/$c.log" 2>/dev/null)"
  done
}

node_ready() {
  [ "$(k get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

status() {
  [ -e "/run/netns/$NETNS" ] && [ -s "$NODE_DIR/net.env" ] || return 1
  # shellcheck source=/dev/null
  . "$NODE_DIR/net.env"
  [ "$(cat "$NODE_DIR/api-port" 2>/dev/null)" = "$(api_port)" ] || return 1
  local c
  for c in "${COMPONENTS[@]}"; do our_pid "$c" >/dev/null || return 1; done
  node_ready
}

save_kernel_tunables() {
  mkdir -p "$MACHINE_STATE"
  (
    flock 9
    [ -s "$MACHINE_STATE/kernel-tunables" ] && exit 0
    local t
    for t in "${KERNEL_TUNABLES[@]}"; do echo "$t $(cat "/proc/sys/$t")"; done >"$MACHINE_STATE/kernel-tunables"
  ) 9>"$MACHINE_STATE/tunables.lock"
}

restore_machine_state() { # only when no real node of any cluster is left on this machine
  [ -d "$MACHINE_STATE" ] || return 0
  (
    flock 9
    ls /run/netns/agentscale-* >/dev/null 2>&1 && exit 0
    local t v
    if [ -s "$MACHINE_STATE/kernel-tunables" ]; then
      while read -r t v; do echo "$v" >"/proc/sys/$t" 2>/dev/null || true; done <"$MACHINE_STATE/kernel-tunables"
      rm -f "$MACHINE_STATE/kernel-tunables"
    fi
    # The kubelet's device-plugin socket and checkpoint have a fixed path, shared by every kubelet here.
    rm -f /var/lib/kubelet/device-plugins/kubelet.sock /var/lib/kubelet/device-plugins/kubelet_internal_checkpoint
    rmdir /var/lib/kubelet/device-plugins /var/lib/kubelet 2>/dev/null || true
    rmdir /run/containerd/s /run/containerd 2>/dev/null || true # the shims' socket folder, if empty
  ) 9>"$MACHINE_STATE/tunables.lock"
}

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
  load_project_images
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
