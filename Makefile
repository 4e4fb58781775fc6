# The two commands a new machine needs (see README):
#   make demo   - local cluster + operator + a workflow under load
#   make test   - everything CI runs
.PHONY: demo test crd rbac rules golden lint

demo:
	bash scripts/demo.sh

test:
	bash scripts/test.sh

crd:  # the CRD from the API models, its copy in the chart, and the API reference
	.venv/bin/agentscale crd --write crds/agentscale.io_agentworkflows.yaml
	cp crds/agentscale.io_agentworkflows.yaml charts/agentscale/crds/
	.venv/bin/agentscale docs --write docs/api.md

rbac:  # the chart's RBAC rules from the kinds table
	.venv/bin/python -m agentscale.rbac --write charts/agentscale/files

rules:  # the resource controller's signals as Prometheus recording rules, for the chart
	.venv/bin/agentscale prometheus-rules --write charts/agentscale/files/prometheus-recording.yaml

golden:
	UPDATE_GOLDEN=1 .venv/bin/python -m pytest operator/tests/test_render.py -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy operator/agentscale workloads/agentscale_worker workloads/agentscale_harness images/build.py
