#!/usr/bin/env bash
# Delete the kind provider's cluster (UNTESTED here: needs Docker or Podman).
set -euo pipefail
# shellcheck source=../common.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/../common.sh"
kind delete cluster --name "$AGENTSCALE_CLUSTER_NAME"
rm -f "$AGENTSCALE_KUBECONFIG"
