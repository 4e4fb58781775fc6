# shellcheck shell=bash
# The real node's configuration files: containerd, CNI, kubelet, kube-proxy, CoreDNS.
# Sourced by ../node.sh after its names, paths and helpers; defines functions and constants only.

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
# Images come from local archives, not a registry: never garbage-collect them. Under disk pressure the
# eviction manager deletes unused images whatever the GC thresholds say (seen: at 2% of a 252 GB disk, i.e.
# 5 GB free on a machine busy with other checkouts, it removed the Triton and pause images mid-suite, and
# every later pod failed to pull registry.k8s.io/pause), so the disk signals are absolute and small: the node
# shares the host's disk and only a disk that is really full should count.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 256Mi
  nodefs.inodesFree: 1%
  imagefs.available: 256Mi
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
