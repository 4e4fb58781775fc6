# Prometheus for the e2e suite's closed loop (e2e/tests/prometheus_support.py runs it in a pod on the real node,
# where the pods it scrapes are reachable). Debian's `prometheus` package (2.42) cannot serve here: Debian
# builds it without the Kubernetes service discovery (`kubernetes_sd_configs` is "field not found"), which is
# what promql.SCRAPE_RELABEL_CONFIGS is written for. So the server is built from its Go module (Prometheus
# 3.x is module v0.3xx.y) with Go from bookworm-backports,
# switched to the toolchain the module asks for through the Go module proxy. Only the static binary ships,
# on the plain base: no Go, no compiler, no web UI assets (the HTTP API the controller queries is built in).
# Non-root; the TSDB goes to /prometheus (an emptyDir in the e2e Deployment).
# Build from the repository root:
#   podman build -f images/prometheus.Dockerfile [--build-arg BASE_IMAGE=debian:bookworm-slim] .
# A CA bundle for the module proxy may be given as the build secret `pipcert` (build stage only).
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
ARG PROMETHEUS_MODULE_VERSION=v0.309.1
ARG GO_TOOLCHAIN=go1.24.9
RUN echo "deb http://deb.debian.org/debian bookworm-backports main" >/etc/apt/sources.list.d/backports.list \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -t bookworm-backports \
      golang-1.23-go ca-certificates
WORKDIR /src
# A scratch module that requires the server's module, with that module's own exclude directives (its go.mod
# has them, so `go install pkg@version` refuses it).
RUN --mount=type=secret,id=pipcert \
    --mount=type=cache,target=/root/go \
    --mount=type=cache,target=/root/.cache/go-build \
    if [ -s /run/secrets/pipcert ]; then export SSL_CERT_FILE=/run/secrets/pipcert; fi \
 && export GOTOOLCHAIN=${GO_TOOLCHAIN} CGO_ENABLED=0 GOFLAGS=-buildvcs=false PATH=/usr/lib/go-1.23/bin:$PATH \
 && printf '%s\n' 'module agentscale.local/prometheus' '' "go ${GO_TOOLCHAIN#go}" '' \
      'exclude github.com/linode/linodego v1.0.0' \
      'exclude github.com/grpc-ecosystem/grpc-gateway v1.14.7' \
      'exclude google.golang.org/api v0.30.0' >go.mod \
 && go get github.com/prometheus/prometheus/cmd/prometheus@${PROMETHEUS_MODULE_VERSION} \
 && go build -trimpath -o /usr/local/bin/prometheus \
      -ldflags "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_MODULE_VERSION}" \
      github.com/prometheus/prometheus/cmd/prometheus \
 && /usr/local/bin/prometheus --version

FROM ${BASE_IMAGE}
COPY --from=build /usr/local/bin/prometheus /usr/bin/prometheus
RUN mkdir -p /prometheus /etc/prometheus && chown 10001:10001 /prometheus
USER 10001:10001
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
