"""Test and benchmark harness of the data plane; never shipped in the worker image.

- ``local``: real ``redis-server`` and ``tritonserver`` processes on loopback (the Triton model repository
  built from ``workloads/models`` with the ``config.pbtxt`` the operator renders, see ``models``).
- ``models``: the Triton model servers of the example workflows (and the benchmarks' ``encoder-large``) as the
  operator's API objects, and their configuration rendered by ``agentscale.render.triton.config_pbtxt``.
- ``sim``: a SIMULATED model server (``python -m agentscale_harness.sim``) for scale tests and benchmarks.

It imports the worker package and, read-only, the operator's API and renderer."""
