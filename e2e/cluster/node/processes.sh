# shellcheck shell=bash
# The real node's processes: start, find, stop, health, machine-wide kernel state.
# Sourced by ../node.sh after its names, paths and helpers; defines functions and constants only.

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
