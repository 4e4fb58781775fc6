# shellcheck shell=bash
# Settings shared by up.sh, down.sh and env.sh. Sourced, never executed.
_agentscale_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.sh
. "$_agentscale_here/versions.sh"

AGENTSCALE_REPO="$(cd "$_agentscale_here/../.." && pwd)"
AGENTSCALE_CLUSTER_NAME="${AGENTSCALE_CLUSTER_NAME:-agentscale}"
AGENTSCALE_KUBECONFIG="${AGENTSCALE_KUBECONFIG:-$AGENTSCALE_REPO/.cluster/kubeconfig}"
# kwokctl keeps each cluster's pids, logs, certificates and etcd data under its workdir.
# One workdir per checkout (.cluster/ is gitignored), so two checkouts never share a cluster.
export KWOK_WORKDIR="${KWOK_WORKDIR:-$AGENTSCALE_REPO/.cluster/kwok}"

# agentscale_path: PATH with every cached component directory in front (no duplicates).
agentscale_path() {
  local name ver dir p="$PATH"
  while read -r name ver; do
    dir="$AGENTSCALE_BIN/$name-$ver"
    case ":$p:" in *":$dir:"*) ;; *) p="$dir:$p" ;; esac
  done < <(agentscale_components)
  echo "$p"
}
