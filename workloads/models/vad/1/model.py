"""Triton entry point: every example model runs agentscale_worker.triton_model (see its docstring)."""

import os
import site
import sys

_before = list(sys.path)
for _folder in filter(None, os.environ.get("AGENTSCALE_MODEL_SITE", "").split(os.pathsep)):
    site.addsitedir(_folder)  # also runs the folder's .pth files (editable installs)
sys.path[:] = [p for p in sys.path if p not in _before] + _before  # ahead of the system's: the stub ignores venvs
from agentscale_worker.triton_model import TritonPythonModel  # noqa: E402,F401
