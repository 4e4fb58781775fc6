# Step workers and the gateway: `agentscale-worker step|gateway`. Installs only the worker distribution
# (workloads/pyproject.toml): no operator, kopf or pydantic, no test harness, no benchmarks.
# Build from the repository root:
#   podman build -f images/worker.Dockerfile [--build-arg BASE_IMAGE=python:3.11-slim] .
# images/build.py builds it here on a Debian base made with debootstrap (no registry).
# A CA bundle for pip may be given as the build secret `pipcert`; it is used by the build stage only.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
COPY workloads/pyproject.toml ./
# Dependencies first, from pyproject.toml alone: a layer that source edits do not invalidate.
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && python3 -m venv /opt/agentscale \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' >/tmp/requirements.txt \
 && /opt/agentscale/bin/pip install --no-cache-dir --disable-pip-version-check "setuptools>=68" wheel -r /tmp/requirements.txt
COPY workloads/agentscale_worker/ agentscale_worker/
RUN /opt/agentscale/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps --no-build-isolation . \
 && /opt/agentscale/bin/python -m pip uninstall -q -y setuptools wheel pip \
 && find /opt/agentscale -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
COPY --from=build /opt/agentscale /opt/agentscale
ENV PATH=/opt/agentscale/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin agentscale
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["agentscale-worker"]
CMD ["step", "--help"]
