"""Trace replay of the resource controller against an HPA, a KEDA-style scaler and a clairvoyant oracle.

The controller's policy is the operator's own (``agentscale.resource_controller.decide`` on a snapshot built
by ``agentscale.resource_controller.loop.snapshot_of``); this package adds only what the cluster would:
arrivals, a multi-server FIFO queue per step at one-second resolution, pods that take a start-up delay to
become ready, and the signals Prometheus would give (scrapes, rate/deriv windows, histogram quantiles).

- ``traces``: the seeded traces and the CSV format (one column of arrival timestamps, seconds).
- ``service``: the service-time distribution fitted to the data plane's measured latencies.
- ``sim``: the queue, the pods and the Prometheus view; one run of one policy on one trace.
- ``policies``: this controller (queue and slo mode), the HPA on CPU and the KEDA-style scaler.
- ``oracle``: the fewest replicas per second that meets the target, with the whole trace known.
- ``run``: every policy on every trace -> ``results/controller.json``; ``report``: docs and plots.
"""
