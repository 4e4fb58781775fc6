# Step workers, gateway and the simulated model server: `agentscale-worker step|gateway|simserver`.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md* ./
COPY operator/ operator/
COPY workloads/agentscale_worker/ workloads/agentscale_worker/
RUN pip install --no-cache-dir '.[worker]' && useradd -u 10001 agentscale
USER 10001
EXPOSE 8080 9090
ENTRYPOINT ["agentscale-worker"]
CMD ["step", "--help"]
