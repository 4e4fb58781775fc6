# Redis for the workflows' queues: Debian's redis-server, run as a non-root user with no persistence (the
# chart's optional in-cluster Redis and the e2e suite's). Build from the repository root:
#   podman build -f images/redis.Dockerfile [--build-arg BASE_IMAGE=debian:bookworm-slim] .
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && rm -f /etc/redis/redis.conf
USER 10001:10001
EXPOSE 6379
ENTRYPOINT ["redis-server"]
CMD ["--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no", "--save", "", "--appendonly", "no", "--dir", "/tmp"]
