# Triton with the example model repository. The Python-backend stub uses the system Python, so numpy and
# agentscale_worker (the networks in examples/nets.py) are installed there; no AGENTSCALE_MODEL_SITE needed.
# The examples name modelRepository file:///opt/agentscale/models: the operator's init container copies a model
# from there into the pod's /models (an emptyDir), so the repository must not live at /models itself.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
COPY pyproject.toml /src/
COPY operator/ /src/operator/
COPY workloads/agentscale_worker/ /src/workloads/agentscale_worker/
RUN pip install --no-cache-dir "numpy>=1.26,<3" && pip install --no-cache-dir --no-deps /src && rm -rf /src
COPY workloads/models/ /opt/agentscale/models/
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/opt/agentscale/models"]
