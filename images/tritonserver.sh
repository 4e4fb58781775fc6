#!/bin/sh
# `tritonserver` in the agentscale Triton image: the wheel's server with its bundled libraries, and the
# models' Python packages (numpy, agentscale_worker) put on the Python backend's path (the stub runs the
# image's python3, not the venv, so model.py adds AGENTSCALE_MODEL_SITE to sys.path).
set -eu
export LD_LIBRARY_PATH="/opt/tritonserver/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if [ -z "${AGENTSCALE_MODEL_SITE:-}" ]; then
  AGENTSCALE_MODEL_SITE="$(/opt/agentscale/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  export AGENTSCALE_MODEL_SITE
fi
exec /opt/tritonserver/bin/tritonserver "$@"
