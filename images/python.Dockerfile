# The Python base the project's Python images use when built here without a registry: Debian bookworm's own
# python3 (3.11, like python:3.11-slim) on the debootstrap root filesystem that images/build.py imports as
# BASE_IMAGE. Users with Docker skip this file and build the other images on python:3.11-slim.
# libpython3.11: tritonserver's Python-backend stub links it (python:3.11-slim ships it in /usr/local/lib).
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv libpython3.11 ca-certificates \
 && apt-get clean && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log
