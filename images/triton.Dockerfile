# Triton with the example model repository. The Python-backend stub uses the system Python, so numpy and the
# worker distribution (agentscale_worker: triton_model.py and the networks in examples/nets.py) are installed
# there, without their other dependencies; no AGENTSCALE_MODEL_SITE needed. No operator package.
# The examples name modelRepository file:///opt/agentscale/models: the operator's init container copies a model
# from there into the pod's /models (an emptyDir) and overlays the config.pbtxt it rendered, so the repository
# must not live at /models itself. The committed config.pbtxt files are that same rendering of the example
# workflows (workloads/tests/test_models.py), so the image also serves standalone on a GPU machine.
# Build from the repository root: podman build -f images/triton.Dockerfile [--build-arg TRITON_IMAGE=...] .
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3

FROM ${TRITON_IMAGE}
COPY workloads/pyproject.toml /src/
COPY workloads/agentscale_worker/ /src/agentscale_worker/
RUN pip install --no-cache-dir "numpy>=1.26,<3" && pip install --no-cache-dir --no-deps /src && rm -rf /src
COPY workloads/models/ /opt/agentscale/models/
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/opt/agentscale/models"]
