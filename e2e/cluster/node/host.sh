# shellcheck shell=bash
# The real node's host side: Debian packages, images, addresses and namespace, cgroups,
# certificates.
# Sourced by ../node.sh after its names, paths and helpers; defines functions and constants only.

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
