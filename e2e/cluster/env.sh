# shellcheck shell=bash
# Source me: puts the cached cluster binaries (kubectl 1.34, helm, kwokctl, ...) first on
# PATH and points KUBECONFIG at the local agentscale cluster.
#   . e2e/cluster/env.sh
# shellcheck source=common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"
PATH="$(agentscale_path)"
export PATH
export KUBECONFIG="$AGENTSCALE_KUBECONFIG"
export KWOK_WORKDIR
