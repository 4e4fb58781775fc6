# The two commands a new machine needs (see README):
#   make demo   - local cluster + operator + a workflow under load
#   make test   - everything CI runs
.PHONY: demo test crd golden lint

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

crd:
	.venv/bin/agentscale crd --write crds/agentscale.io_agentworkflows.yaml

golden:
	UPDATE_GOLDEN=1 .venv/bin/python -m pytest operator/tests/test_render.py -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy operator/agentscale workloads/agentscale_worker workloads/agentscale_harness
