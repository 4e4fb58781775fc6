#!/usr/bin/env bash
# Delete the local agentscale cluster. node.sh stops the real node and removes everything it made;
# kwokctl stops only the processes it started for this cluster (it tracks their pids under
# $KWOK_WORKDIR) and removes the cluster's files.
set -euo pipefail
# shellcheck source=common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/common.sh"

log() { printf '[%s] down: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The real node first (its kubelet, containerd, containers, namespace, cgroups), while the API server
# still answers; it needs nothing kwokctl made.
"$(dirname "${BASH_SOURCE[0]}")/node.sh" down

kwokctl="$(agentscale_bin kwokctl)"
if [ ! -x "$kwokctl" ]; then
  log "kwokctl not built ($kwokctl); nothing kwokctl could have started"
  exit 0
fi
if "$kwokctl" get clusters 2>/dev/null | grep -qx "$AGENTSCALE_CLUSTER_NAME"; then
  log "deleting cluster $AGENTSCALE_CLUSTER_NAME (workdir $KWOK_WORKDIR)"
  "$kwokctl" delete cluster --name "$AGENTSCALE_CLUSTER_NAME" --kubeconfig "$AGENTSCALE_KUBECONFIG"
else
  log "no cluster named $AGENTSCALE_CLUSTER_NAME in $KWOK_WORKDIR"
fi
rm -f "$AGENTSCALE_KUBECONFIG"
log "done"
