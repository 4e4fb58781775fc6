# Triton with the example model repository. The Python-backend stub uses the system Python, so numpy and
# agentscale_worker (the networks in examples/nets.py) are installed there; no AGENTSCALE_MODEL_SITE needed.
FROM nvcr.io/nvidia/tritonserver:24.10-py3
COPY pyproject.toml /src/
COPY operator/ /src/operator/
COPY workloads/agentscale_worker/ /src/workloads/agentscale_worker/
RUN pip install --no-cache-dir "numpy>=1.26,<3" && pip install --no-cache-dir --no-deps /src && rm -rf /src
COPY workloads/models/ /models/
EXPOSE 8000 8001 8002
CMD ["tritonserver", "--model-repository=/models"]
