"""Triton Python-backend model for agentscale's example workflows (one implementation for every model).

Each ``workloads/models/<name>/1/model.py`` is a few-line entry point that puts the folders named in
``AGENTSCALE_MODEL_SITE`` in front of ``sys.path`` (the backend stub ignores PYTHONPATH and virtual
environments) and imports :class:`TritonPythonModel` from here. The model's name (from its config) selects
the PyTorch network that ``agentscale_worker.examples.nets.build`` makes, the function the tests also call
directly; it runs under ``torch.inference_mode`` on ``cuda`` when Triton places the instance on a GPU
(``KIND_GPU``) and torch sees one, else on the CPU: the same code on both.
``auto_complete_config`` declares inputs, outputs and batching, so the operator's config.pbtxt needs only
name, backend, max_batch_size, dynamic_batching, instance_group and parameters.

Parameters: ``agentscale_site`` (more site folders, e.g. a torch environment), ``agentscale_seed`` (weights
seed, default 0) and ``agentscale_repeat`` (run the forward pass this many times; real work used to build
deliberately slower replicas for load-balancing benchmarks; also the env var ``AGENTSCALE_MODEL_REPEAT``).

This module only runs inside Triton's Python backend (``triton_python_backend_utils`` exists nowhere else).
"""
# mypy: ignore-errors

import json
import os
import site
import sys


def _add_sites(spec):
    before = list(sys.path)
    for folder in (spec or "").split(os.pathsep):
        if folder and folder not in sys.path:
            site.addsitedir(folder)  # also runs the folder's .pth files (editable installs)
    added = [p for p in sys.path if p not in before]
    sys.path[:] = added + before


import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


def _param(config, key, default=""):
    value = config.get("parameters", {}).get(key)
    if isinstance(value, dict):
        return value.get("string_value", default)
    return default


def _nets(config):
    _add_sites(_param(config, "agentscale_site"))
    from agentscale_worker.examples import nets

    return nets


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(auto_complete_model_config):
        config = auto_complete_model_config.as_dict()
        nets = _nets(config)
        spec = nets.SPECS[config["name"]]
        for t in spec.inputs:
            auto_complete_model_config.add_input(
                {"name": t.name, "data_type": t.triton_type, "dims": list(t.dims)}
            )
        for t in spec.outputs:
            auto_complete_model_config.add_output(
                {"name": t.name, "data_type": t.triton_type, "dims": list(t.dims)}
            )
        if config.get("max_batch_size", 0) == 0:
            # a minimal config (no batching stated): batch up to 64 with Triton's dynamic batcher. A config
            # that states max_batch_size is taken as written: without a dynamic_batching block, batching is
            # off (the operator renders the block only when the spec asks for it).
            auto_complete_model_config.set_max_batch_size(64)
            auto_complete_model_config.set_dynamic_batching()
        return auto_complete_model_config

    def initialize(self, args):
        config = json.loads(args["model_config"])
        nets = _nets(config)
        self.name = config["name"]
        self.spec = nets.SPECS[self.name]
        kind, device_id = args.get("model_instance_kind", "CPU"), args.get("model_instance_device_id", 0)
        device = nets.device_for(kind, device_id)
        self.net = nets.build(self.name, seed=int(_param(config, "agentscale_seed", "0") or 0), device=device)
        self.repeat = max(
            1, int(_param(config, "agentscale_repeat", "") or os.environ.get("AGENTSCALE_MODEL_REPEAT", "1"))
        )

    def execute(self, requests):
        # Requests Triton's dynamic batcher grouped: concatenate, run once, split back.
        inputs = {t.name: [] for t in self.spec.inputs}
        sizes = []
        for request in requests:
            n = None
            for t in self.spec.inputs:
                arr = pb_utils.get_input_tensor_by_name(request, t.name).as_numpy()
                inputs[t.name].append(arr)
                n = arr.shape[0]
            sizes.append(n)
        batch = {k: np.concatenate(v, axis=0) for k, v in inputs.items()}
        for _ in range(self.repeat):
            out = self.net(batch)
        responses = []
        start = 0
        for n in sizes:
            tensors = [
                pb_utils.Tensor(t.name, np.ascontiguousarray(out[t.name][start : start + n], dtype=t.dtype))
                for t in self.spec.outputs
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += n
        return responses
