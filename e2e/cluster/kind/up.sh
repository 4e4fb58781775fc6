#!/usr/bin/env bash
# kind provider: create (or reuse) a kind cluster named agentscale and give its workers the
# labels, taints and extended resources of the fake GPU pool in ../nodes.yaml.
# Needs `kind` and a container engine (Docker/Podman). UNTESTED here (no Docker engine in the
# dev environment); the kwok provider (../up.sh) is the tested one. It also builds the project's images on
# public bases, loads them into the nodes and installs the chart (the end of this script). kind has no usage
# simulation, so the HPA test in e2e/tests/test_cluster.py skips on kind (install
# metrics-server yourself for real HPA work).
#
# Worker -> pool mapping (kind names workers <name>-worker, <name>-worker2, ...):
#   worker  -> gpu-h100-0   worker2 -> gpu-h100-1   worker3 -> gpu-mig-0
#   worker4 -> cpu-0        worker5 -> cpu-1
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=../common.sh
. "$HERE/../common.sh"

log() { printf '[%s] kind-up: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

command -v kind >/dev/null || die "kind not found (https://kind.sigs.k8s.io); it also needs Docker or Podman"
kubectl_bin="$(agentscale_bin kubectl)"
[ -x "$kubectl_bin" ] || kubectl_bin="$(command -v kubectl)" || die "no kubectl (run ../build.sh)"
name="$AGENTSCALE_CLUSTER_NAME"
kc="$AGENTSCALE_KUBECONFIG"
mkdir -p "$(dirname "$kc")"
k() { "$kubectl_bin" --kubeconfig "$kc" "$@"; }

if kind get clusters 2>/dev/null | grep -qx "$name"; then
  log "reusing kind cluster $name"
  kind get kubeconfig --name "$name" >"$kc"
else
  log "creating kind cluster $name"
  kind create cluster --name "$name" --config "$HERE/kind-config.yaml" --kubeconfig "$kc" --wait 5m
fi
chmod 600 "$kc"

# One line per logical node of nodes.yaml: <logical-name> <json of labels, taints, extended resources>.
k create --dry-run=client -o json -f "$HERE/../nodes.yaml" | python3 -c '
import json, re, sys
text, decoder, space = sys.stdin.read(), json.JSONDecoder(), re.compile(r"\s*")
pos = space.match(text).end()
while pos < len(text):  # kubectl prints one JSON object per node, back to back
    node, pos = decoder.raw_decode(text, pos)
    pos = space.match(text, pos).end()
    labels = {key: value for key, value in node["metadata"]["labels"].items()
              if not key.startswith("kubernetes.io/") and key != "type"}
    extended = {key: value for key, value in node["status"]["capacity"].items() if "/" in key}
    print(node["metadata"]["name"], json.dumps(
        {"labels": labels, "taints": node["spec"].get("taints") or [], "extended": extended}))
' >"$(dirname "$kc")/kind-pool.txt"

suffixes=("" 2 3 4 5)
i=0
while read -r logical spec; do
  node="$name-worker${suffixes[$i]}"
  i=$((i + 1))
  log "$node -> $logical"
  python3 -c '
import json, sys
spec = json.loads(sys.argv[1])
print(" ".join(f"{k}={v}" for k, v in spec["labels"].items()), "agentscale.io/logical-node=" + sys.argv[2])
' "$spec" "$logical" | xargs "$kubectl_bin" --kubeconfig "$kc" label node "$node" --overwrite >/dev/null
  python3 -c '
import json, sys
for t in json.loads(sys.argv[1])["taints"]:
    print("{}={}:{}".format(t["key"], t.get("value", ""), t["effect"]))
' "$spec" | while read -r taint; do
    k taint node "$node" "$taint" --overwrite >/dev/null
  done
  patch="$(python3 -c '
import json, sys
ops = []
for res, qty in json.loads(sys.argv[1])["extended"].items():
    path = res.replace("~", "~0").replace("/", "~1")
    ops += [{"op": "add", "path": f"/status/capacity/{path}", "value": qty},
            {"op": "add", "path": f"/status/allocatable/{path}", "value": qty}]
print(json.dumps(ops))
' "$spec")"
  [ "$patch" = "[]" ] || k patch node "$node" --subresource=status --type=json -p "$patch" >/dev/null
done <"$(dirname "$kc")/kind-pool.txt"

k wait --for=condition=Ready node --all --timeout=180s >/dev/null
deadline=$((SECONDS + 60))
until k -n default get serviceaccount default >/dev/null 2>&1; do
  [ $SECONDS -lt $deadline ] || die "default ServiceAccount did not appear"
  sleep 2
done

# The project's images, built from the same Dockerfiles on public bases (images/*.Dockerfile), loaded into
# kind's nodes (no registry), and the chart with its Redis, the operator on the cpu-0 worker: what the kwok
# provider's real node runs. AGENTSCALE_KIND_CHART=0 skips it.
if [ "${AGENTSCALE_KIND_CHART:-1}" = 1 ]; then
  engine="$(command -v docker || command -v podman)" || die "no docker or podman to build the images"
  helm_bin="$(agentscale_bin helm)"
  [ -x "$helm_bin" ] || helm_bin="$(command -v helm)" || die "no helm (run ../build.sh helm)"
  for img in operator worker triton redis; do
    base=python:3.11-slim
    [ "$img" = redis ] && base=debian:bookworm-slim
    log "building agentscale/$img:0.1.0 on $base"
    DOCKER_BUILDKIT=1 "$engine" build -q -f "$AGENTSCALE_REPO/images/$img.Dockerfile" --build-arg "BASE_IMAGE=$base" \
      -t "agentscale/$img:0.1.0" "$AGENTSCALE_REPO" >/dev/null
    kind load docker-image --name "$name" "agentscale/$img:0.1.0" >/dev/null
  done
  "$helm_bin" upgrade --install agentscale "$AGENTSCALE_REPO/charts/agentscale" --kubeconfig "$kc" \
    --namespace agentscale-system --create-namespace --wait --timeout 5m \
    --set redis.enabled=true --set redis.image.repository=agentscale/redis --set redis.image.tag=0.1.0 \
    --set-json 'nodeSelector={"agentscale.io/logical-node":"cpu-0"}' \
    --set-json 'redis.nodeSelector={"agentscale.io/logical-node":"cpu-0"}' >/dev/null
  log "chart installed: the operator (2 replicas) and Redis in namespace agentscale-system"
fi
log "kind cluster $name ready; kubeconfig: $kc"
