# shellcheck shell=bash
# Pinned component versions and cache locations for the local agentscale cluster.
# Sourced by build.sh, up.sh, down.sh and env.sh; safe to source more than once.

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.8.0}"
# Cluster DNS for the real node (e2e/cluster/node.sh): CoreDNS with its kubernetes plugin, as a local process.
COREDNS_VERSION="${COREDNS_VERSION:-v1.12.4}"

AGENTSCALE_CACHE="${AGENTSCALE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentscale}"
AGENTSCALE_BIN="$AGENTSCALE_CACHE/bin"

# "<component> <version>" pairs; the binary lives at $AGENTSCALE_BIN/<component>-<version>/<component>.
agentscale_components() {
  cat <<LIST
kube-apiserver $KUBE_VERSION
kube-controller-manager $KUBE_VERSION
kube-scheduler $KUBE_VERSION
kubectl $KUBE_VERSION
kubelet $KUBE_VERSION
kube-proxy $KUBE_VERSION
etcd $ETCD_VERSION
kwok $KWOK_VERSION
kwokctl $KWOK_VERSION
helm $HELM_VERSION
metrics-server $METRICS_SERVER_VERSION
coredns $COREDNS_VERSION
LIST
}

# agentscale_bin <component>: path of the cached binary for the pinned version.
agentscale_bin() {
  local name ver
  while read -r name ver; do
    if [ "$name" = "$1" ]; then
      echo "$AGENTSCALE_BIN/$name-$ver/$name"
      return 0
    fi
  done < <(agentscale_components)
  echo "unknown component: $1" >&2
  return 1
}
