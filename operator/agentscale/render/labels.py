"""Names and labels shared by every child object of a workflow."""

from __future__ import annotations

from agentscale.api.models import GATEWAY_PART, WORKFLOW_PART, AgentWorkflow

MANAGED_BY = "agentscale"
WORKFLOW_LABEL = "agentscale.io/workflow"
COMPONENT_LABEL = "agentscale.io/component"
STEP_LABEL = "agentscale.io/step"
MODEL_LABEL = "agentscale.io/model"
HASH_ANNOTATION = "agentscale.io/spec-hash"
CONFIG_HASH_ANNOTATION = "agentscale.io/config-hash"
FIELD_MANAGER = "agentscale"

STEP = "step"
MODEL = "model"
GATEWAY = GATEWAY_PART
WORKFLOW = WORKFLOW_PART  # objects of the whole workflow: its ServiceAccount and NetworkPolicy


def child_name(wf: AgentWorkflow, part: str) -> str:
    return f"{wf.name}-{part}"


def selector_labels(wf: AgentWorkflow, component: str, part: str | None = None) -> dict[str, str]:
    """Labels that select one component's pods. Immutable once a Deployment exists: never add to them."""
    out = {WORKFLOW_LABEL: wf.name, COMPONENT_LABEL: component}
    if component == STEP and part:
        out[STEP_LABEL] = part
    elif component == MODEL and part:
        out[MODEL_LABEL] = part
    return out


def labels(wf: AgentWorkflow, component: str, part: str | None = None) -> dict[str, str]:
    """Recommended app.kubernetes.io labels plus the selector labels."""
    name = {
        STEP: "agentscale-worker",
        MODEL: "triton",
        GATEWAY: "agentscale-gateway",
        WORKFLOW: "agentscale-workflow",
    }[component]
    out = {
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/instance": child_name(wf, part or component),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "agentscale",
        "app.kubernetes.io/managed-by": MANAGED_BY,
    }
    out.update(selector_labels(wf, component, part))
    return out
