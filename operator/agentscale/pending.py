"""Pods that wait: those the scheduler could not place (what they ask for, the scheduler's reasons in its own
words, and the messages status shows for them: ``GPUCapacityShort`` for GPUs, ``Unschedulable`` for the rest),
and gateway pods the kubelet cannot start because the tokens Secret does not exist (``GatewayTokensMissing``,
read from the kubelet's FailedMount Events, the only place that names the Secret). Pure."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from agentscale.api.models import parse_quantity
from agentscale.render import labels as L

_GPU_RESOURCE = re.compile(r"^nvidia\.com/(gpu(\.shared)?|mig-.+)$")


# ------------------------------------------------------------------------------------ the scheduler's words


@dataclass(frozen=True)
class Blocker:
    """One kind of reason the scheduler gives for passing over nodes, and what a person can do about it."""

    reason: str  # the condition reason: one CamelCase word
    capacity: bool  # more room (nodes, smaller requests, fewer replicas) resolves it
    what: str  # in words; {resource} is the resource named by the scheduler
    advice: str


# The scheduler's per-node reasons (kube-scheduler 1.34 filter plugins, older wordings too), first match wins.
# A GPU shortage is GPUCapacityShort's; every other row is reported by the Unschedulable condition.
_BLOCKERS: tuple[tuple[re.Pattern[str], Blocker], ...] = tuple(
    (re.compile(pattern), blocker)
    for pattern, blocker in (
        (
            r"^Insufficient (nvidia\.com/\S+)$",
            Blocker("InsufficientGPU", True, "not enough free {resource}", "See GPUCapacityShort."),
        ),
        (
            r"^Insufficient (cpu)$",
            Blocker(
                "InsufficientCPU",
                True,
                "not enough free CPU on the nodes they may use",
                "Add nodes (or larger ones) with free CPU, lower resources.requests.cpu or replicas, or "
                "free CPU that other workloads request.",
            ),
        ),
        (
            r"^Insufficient (memory)$",
            Blocker(
                "InsufficientMemory",
                True,
                "not enough free memory on the nodes they may use",
                "Add nodes (or larger ones) with free memory, lower resources.requests.memory or replicas, "
                "or free memory that other workloads request.",
            ),
        ),
        (
            r"^Insufficient (\S+)$",
            Blocker(
                "InsufficientResource",
                True,
                "not enough free {resource} on the nodes they may use",
                "Add nodes with free {resource}, lower the pods' {resource} request or replicas, or free "
                "{resource} that other workloads request.",
            ),
        ),
        (
            r"^Too many pods$",
            Blocker(
                "TooManyPods",
                True,
                "the nodes already run as many pods as they may",
                "Add nodes, raise the kubelet's maxPods, or lower replicas.",
            ),
        ),
        (
            r"untolerated taint|taints that the pod didn't tolerate",
            Blocker(
                "UntoleratedTaint",
                False,
                "the nodes carry taints the pods do not tolerate",
                "Add nodes without those taints, or remove the taint from the nodes meant for these pods "
                "(kubectl taint nodes NODE KEY-).",
            ),
        ),
        (
            r"node affinity/selector|scheduler-enforced node affinity|pod affinity terms conflict",
            Blocker(
                "NodeSelectorMismatch",
                False,
                "no node has the labels the pods select",
                "Label or add nodes that match (gpu.product selects the label nvidia.com/gpu.product), or "
                "fix gpu.product.",
            ),
        ),
        (
            r"were unschedulable",
            Blocker(
                "NodesCordoned",
                False,
                "the nodes are cordoned",
                "Uncordon nodes (kubectl uncordon NODE) or add nodes.",
            ),
        ),
        (
            r"pod affinity rules|anti-affinity rules",
            Blocker(
                "PodAffinityConflict",
                False,
                "pod affinity or anti-affinity rules rule out the nodes",
                "Add nodes, or relax the affinity rules of the pods involved.",
            ),
        ),
        (
            r"topology spread constraints",
            Blocker(
                "TopologySpreadConflict",
                False,
                "topology spread constraints rule out the nodes",
                "Add nodes in the missing topology domains, or label nodes with the topology key.",
            ),
        ),
    )
)
_UNSCHEDULABLE = Blocker(
    "Unschedulable",
    False,
    "no node fits them",
    "Add nodes, or relax what the pods require (resources, placement).",
)
# Every reason the Unschedulable condition can carry (the API docs list them).
UNSCHEDULABLE_REASONS: tuple[str, ...] = (
    *(b.reason for _, b in _BLOCKERS if b.reason != "InsufficientGPU"),
    _UNSCHEDULABLE.reason,
)

_FIT_ERROR = re.compile(r"^0/(\d+) nodes are available:\s*(.*?)\.?(?=\s+preemption:|\s*$)", re.S)
_COUNTED = re.compile(r"^(\d+) (.+)$", re.S)


@dataclass(frozen=True)
class Verdict:
    """The scheduler's message, parsed: why it passed over the nodes, and what to do."""

    nodes: int | None  # N of "0/N nodes are available", None when the message has another form
    reasons: tuple[tuple[int, str], ...]  # (nodes, reason) as the scheduler counts them
    summary: str  # the message without its preemption tail
    blocker: Blocker  # the most pressing reason
    resource: str  # the resource the blocker names ("" when none)


@functools.lru_cache(maxsize=1024)
def parse_scheduler_message(message: str) -> Verdict:
    """Parse ``0/5 nodes are available: 2 Insufficient cpu, 3 node(s) had untolerated taint(s). preemption:
    ...``. Reasons that more room would resolve (Insufficient X, Too many pods) win over placement reasons
    (taints, selectors): the nodes that lack room are the ones the pods could use. Ties go to the node count,
    then to the order of the table."""
    text = " ".join(message.split())
    m = _FIT_ERROR.match(text)
    if m:
        nodes: int | None = int(m.group(1))
        summary = text[: m.end()].rstrip(".") + "."
        reasons: list[tuple[int, str]] = []
        for item in m.group(2).split(", "):
            counted = _COUNTED.match(item.strip())
            if counted:
                reasons.append((int(counted.group(1)), counted.group(2).strip()))
            elif item.strip():  # a PreFilter reason applies to every node
                reasons.append((nodes or 0, item.strip()))
    else:
        nodes, summary, reasons = None, text.rstrip(".") + ".", [(0, text)]
    found: list[tuple[int, int, Blocker, str]] = []
    for count, reason in reasons:
        for rank, (pattern, blocker) in enumerate(_BLOCKERS):
            hit = pattern.search(reason)
            if hit:
                found.append((count, -rank, blocker, hit.group(1) if hit.groups() else ""))
                break
    pool = [f for f in found if f[2].capacity] or found
    if not pool:
        return Verdict(nodes, tuple(reasons), summary, _UNSCHEDULABLE, "")
    _, _, blocker, resource = max(pool, key=lambda f: (f[2].capacity, f[0], f[1]))
    return Verdict(nodes, tuple(reasons), summary, blocker, resource)


@dataclass(frozen=True)
class PendingPod:
    """A pod the scheduler could not place: whose it is, what it asks for, and the scheduler's message."""

    name: str
    component: str
    part: str
    message: str
    gpu_resource: str
    gpus: int
    requests: tuple[tuple[str, str], ...] = ()  # (resource, quantity) summed over the pod's containers

    @property
    def short_of_gpus(self) -> bool:
        return bool(self.gpu_resource) and "Insufficient nvidia.com/" in self.message

    @property
    def verdict(self) -> Verdict:
        return parse_scheduler_message(self.message)

    def request(self, resource: str) -> str:
        return dict(self.requests).get(resource, "")


def labels_of(body: Mapping[str, Any]) -> Mapping[str, str]:
    return body.get("metadata", {}).get("labels") or {}


def part_of(labels: Mapping[str, str]) -> tuple[str, str]:
    component = labels.get(L.COMPONENT_LABEL, "")
    part = labels.get(L.STEP_LABEL) or labels.get(L.MODEL_LABEL) or ""
    return component, part


_BINARY = (("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10))


def format_quantity(resource: str, value: Decimal) -> str:
    """A quantity as a person writes it: cpu in cores or millicores, byte counts in binary units."""
    if value == value.to_integral_value():
        n = int(value)
        if resource != "cpu":
            for suffix, shift in _BINARY:
                if n >= 1 << shift and n % (1 << shift) == 0:
                    return f"{n >> shift}{suffix}"
        return str(n)
    if resource == "cpu" and (value * 1000) == (value * 1000).to_integral_value():
        return f"{int(value * 1000)}m"
    return f"{value.normalize():f}"


def _pod_requests(spec: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """What the pod's containers request, summed per resource (init containers aside)."""
    raw: dict[str, list[Any]] = {}
    for c in spec.get("containers") or []:
        for k, v in ((c.get("resources") or {}).get("requests") or {}).items():
            raw.setdefault(k, []).append(v)
    out: list[tuple[str, str]] = []
    for k, values in sorted(raw.items()):
        if len(values) == 1:
            out.append((k, str(values[0])))
            continue
        parsed = [parse_quantity(v) for v in values]
        if all(q is not None for q in parsed):
            out.append((k, format_quantity(k, sum((q for q in parsed if q is not None), Decimal(0)))))
    return tuple(out)


def pending_pod(body: Mapping[str, Any]) -> PendingPod | None:
    """A pod the scheduler could not place, or None for every other pod."""
    st = body.get("status") or {}
    if st.get("phase") != "Pending" or body.get("spec", {}).get("nodeName"):
        return None
    cond = next((c for c in st.get("conditions") or [] if c.get("type") == "PodScheduled"), None)
    if not cond or cond.get("status") != "False" or cond.get("reason") != "Unschedulable":
        return None
    component, part = part_of(labels_of(body))
    spec = body.get("spec", {})
    resource, count = "", 0
    for c in spec.get("containers") or []:
        for k, v in ((c.get("resources") or {}).get("limits") or {}).items():
            if _GPU_RESOURCE.match(k):
                resource, count = k, count + int(v)
    return PendingPod(
        name=body.get("metadata", {}).get("name", ""),
        component=component,
        part=part,
        message=str(cond.get("message", "")),
        gpu_resource=resource,
        gpus=count,
        requests=_pod_requests(spec),
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def gpu_short_message(pending: Iterable[PendingPod]) -> str:
    short = [p for p in pending if p.short_of_gpus]
    if not short:
        return ""
    by_part: dict[tuple[str, str, str, int], int] = {}
    for p in short:
        key = (p.component, p.part, p.gpu_resource, p.gpus)
        by_part[key] = by_part.get(key, 0) + 1
    parts = [
        f"{comp}/{part} x{n} ({per} {res} each)" for (comp, part, res, per), n in sorted(by_part.items())
    ]
    totals: dict[str, int] = {}
    for p in short:
        totals[p.gpu_resource] = totals.get(p.gpu_resource, 0) + p.gpus
    need = ", ".join(f"{v} {k}" for k, v in sorted(totals.items()))
    return (
        f"{_plural(len(short), 'pod')} cannot be scheduled for lack of GPUs: {'; '.join(parts)}; "
        f"{need} more than the nodes can fit. Scheduler: {short[0].message} "
        "Add GPU nodes, lower replicas or GPUs per pod, or free GPUs used by other workloads."
    )


def _who(pods: list[PendingPod], resource: str) -> str:
    """``step/a x2 (cpu 40 each, 80 in all)``: the pods of one part and, for a resource short, what each
    requests."""
    p = pods[0]
    name = f"{p.component}/{p.part}" if p.part else p.component
    request = p.request(resource) if resource else ""
    if not request:
        return f"{name} x{len(pods)}"
    if len(pods) == 1:
        return f"{name} x1 (requests {resource} {request})"
    each = parse_quantity(request)
    total = f", {format_quantity(resource, each * len(pods))} in all" if each is not None else ""
    return f"{name} x{len(pods)} ({resource} {request} each{total})"


def unschedulable(pending: Iterable[PendingPod]) -> tuple[str, str]:
    """(reason, message) for pods the scheduler cannot place for reasons other than a GPU shortage, or
    ("", "") when there are none. Pods are grouped by what blocks them; the reason is the largest group's."""
    blocked = [p for p in pending if not p.short_of_gpus]
    if not blocked:
        return "", ""
    groups: dict[str, dict[tuple[str, str, str], list[PendingPod]]] = {}
    verdicts: dict[str, Verdict] = {}
    for p in blocked:
        v = p.verdict
        key = (p.component, p.part, p.request(v.resource) if v.resource else "")
        groups.setdefault(v.blocker.reason, {}).setdefault(key, []).append(p)
        verdicts.setdefault(v.blocker.reason, v)
    order = [b.reason for _, b in _BLOCKERS] + [_UNSCHEDULABLE.reason]
    ranked = sorted(groups, key=lambda r: (-sum(len(ps) for ps in groups[r].values()), order.index(r)))
    texts = []
    for reason in ranked:
        v = verdicts[reason]
        who = "; ".join(_who(ps, v.resource) for _, ps in sorted(groups[reason].items()))
        what = v.blocker.what.format(resource=v.resource)
        advice = v.blocker.advice.format(resource=v.resource)
        texts.append(f"{who}: {what}. Scheduler: {v.summary} {advice}")
    return ranked[0], f"{_plural(len(blocked), 'pod')} cannot be scheduled: {' '.join(texts)}"


# ---------------------------------------------------------------------------- pods that cannot mount a Secret

# The kubelet's words when a pod's secret volume names a Secret that does not exist (volume manager,
# operation_generator: "MountVolume.SetUp failed for volume %q : %v", the secret plugin's NotFound error). The
# pod stays Pending in ContainerCreating and its status says nothing more; only this Warning Event names the
# Secret, repeated with backoff while the pod waits.
_SECRET_NOT_FOUND = re.compile(
    r'MountVolume\.SetUp failed for volume "(?P<volume>[^"]+)" : secret "(?P<secret>[^"]+)" not found'
)
GATEWAY_TOKENS_MISSING = "GatewayTokensMissing"


@dataclass(frozen=True)
class MissingSecret:
    """A pod that cannot start because a Secret its volume names does not exist (from a FailedMount Event)."""

    namespace: str
    pod: str
    volume: str
    secret: str
    message: str


def missing_secret(event: Mapping[str, Any]) -> MissingSecret | None:
    """The FailedMount Event of a pod whose secret volume names a missing Secret, or None for any other."""
    involved = event.get("involvedObject") or {}
    if event.get("reason") != "FailedMount" or involved.get("kind") != "Pod":
        return None
    message = " ".join(str(event.get("message") or "").split())
    m = _SECRET_NOT_FOUND.search(message)
    if not m:
        return None
    namespace = str(involved.get("namespace") or (event.get("metadata") or {}).get("namespace") or "")
    return MissingSecret(namespace, str(involved.get("name") or ""), m["volume"], m["secret"], message)


def gateway_tokens_missing(
    namespace: str, workflow: str, secret: str | None, volume: str, found: Iterable[MissingSecret]
) -> str:
    """The ``GatewayTokensMissing`` message for the workflow's gateway pods waiting for the tokens Secret
    ``secret`` (mounted as ``volume``), or "" when none is (or authentication is off: ``secret`` None)."""
    if not secret:
        return ""
    # <workflow>-gateway-<pod-template-hash>-<suffix>: not the gateway of a workflow named <workflow>-gateway
    pod_name = re.compile(re.escape(f"{workflow}-{L.GATEWAY}-") + r"[a-z0-9]+-[a-z0-9]+$")
    pods = sorted(
        {
            f.pod
            for f in found
            if f.namespace == namespace
            and f.secret == secret
            and f.volume == volume
            and pod_name.match(f.pod)
        }
    )
    if not pods:
        return ""
    return (
        f"{_plural(len(pods), 'gateway pod')} cannot start: the Secret '{secret}' with the gateway's bearer "
        f"tokens does not exist in namespace '{namespace}' (the operator cannot create or read Secrets). "
        f"Create it, one key per client and a token of at least 16 characters each: kubectl -n {namespace} "
        f"create secret generic {secret} --from-literal=client1=$(openssl rand -hex 32); or name another "
        "Secret in spec.gateway.auth.tokensSecret, or set spec.gateway.auth.enabled: false on a network "
        f'where every client is trusted. Kubelet ({pods[0]}): secret "{secret}" not found.'
    )
