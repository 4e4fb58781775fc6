# Step workers and the gateway: `agentscale-worker step|gateway`. Installs only the worker distribution
# (workloads/pyproject.toml): no operator, kopf or pydantic, no test harness, no benchmarks.
# Build from the repository root: podman build -f images/worker.Dockerfile [--build-arg BASE_IMAGE=...] .
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY workloads/pyproject.toml ./
COPY workloads/agentscale_worker/ agentscale_worker/
RUN python -m venv /opt/agentscale \
 && /opt/agentscale/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/agentscale/bin/pip install --no-cache-dir /src

FROM ${BASE_IMAGE}
COPY --from=build /opt/agentscale /opt/agentscale
ENV PATH=/opt/agentscale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --no-create-home --shell /usr/sbin/nologin agentscale
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["agentscale-worker"]
CMD ["step", "--help"]
