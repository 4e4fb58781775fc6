"""Locust user for the gateway: synchronous runs of the workflow named by AGENTSCALE_BENCH_WORKFLOW."""

import os

from agentscale_worker.examples import sample_input
from locust import FastHttpUser, constant, task

WORKFLOW = os.environ.get("AGENTSCALE_BENCH_WORKFLOW", "shop-recs")
INPUTS = [sample_input(WORKFLOW, i) for i in range(64)]


class GatewayUser(FastHttpUser):
    wait_time = constant(0)
    i = 0

    @task
    def sync_run(self) -> None:
        self.i += 1
        body = {"input": INPUTS[self.i % len(INPUTS)], "timeout_ms": 30000}
        with self.client.post("/v1/runs/sync", json=body, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
