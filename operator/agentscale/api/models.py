"""The AgentWorkflow API (agentscale.io/v1alpha1): the one source of truth.

The CRD in ``crds/`` is generated from these models (``agentscale crd``). Every field carries a description,
so ``kubectl explain agentworkflow.spec.steps`` teaches the API. Cross-field rules that the API server can
check are attached as CEL rules (``x-kubernetes-validations``) with ``cel()``; the operator re-validates the
same object into these models at the boundary and checks what CEL cannot (cycles in ``next``).
"""

from __future__ import annotations

import re
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

from agentscale.api.base import Advice, cel, dns_label_example
from agentscale.api.base import Model as _Model
from agentscale.api.caching import ResponseCache, ResultCache, response_cache_memory_problem
from agentscale.api.placement import Placement
from agentscale.api.pods import GatewayAuth, NetworkPolicySpec, ServiceAccountSpec

GROUP = "agentscale.io"
VERSION = "v1alpha1"
KIND = "AgentWorkflow"
PLURAL = "agentworkflows"
SINGULAR = "agentworkflow"
SHORT_NAMES = ["aw"]
API_VERSION = f"{GROUP}/{VERSION}"

DEFAULT_WORKER_IMAGE = "agentscale/worker:0.1.0"
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"

MAX_STEPS = 64
# What the renderer appends to the workflow's name besides step and model names (<workflow>-gateway, the
# ServiceAccount and NetworkPolicy <workflow>-workflow; render/labels.py names its parts from these). The
# longest sets how long a workflow name may be, since <workflow>-<part> must be a DNS-1035 label (63 at most).
GATEWAY_PART = "gateway"
WORKFLOW_PART = "workflow"
FIXED_PARTS = (GATEWAY_PART, WORKFLOW_PART)
MAX_CHILD_NAME = 63
MAX_WORKFLOW_NAME = MAX_CHILD_NAME - 1 - max(len(p) for p in FIXED_PARTS)
MAX_MODELS = 32
MAX_NEXT = 16

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
REDIS_URL = r"^rediss?://"
# Credentials in a Redis URL: userinfo (user:password@ before the first '/') or a password query parameter.
REDIS_URL_CREDENTIALS = r"^rediss?://[^/]*@|[?&]password="
# A non-negative Kubernetes resource quantity, as k8s.io/apimachinery parses it: "500m", "2", "1.5Gi", "1e3",
# ".5". (Negative quantities parse too, but no request or limit may be negative.)
QUANTITY = r"^\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
QUANTITY_MAX_LENGTH = 64
# isQuantity alone takes a bare suffix ("Gi" reads as 0); a number must come first, as parse_quantity wants.
QUANTITY_RULE = (
    "type(self) == int ? self >= 0 : self.matches('^[+]?[.0-9]') && isQuantity(self) && "
    "!quantity(self).isLessThan(quantity('0'))"
)
QUANTITY_ADVICE = (
    "must be a non-negative Kubernetes quantity, e.g. 500m, 2 or 1.5Gi (binary suffixes Ki, Mi, Gi, Ti; "
    "decimal k, M, G, T; not GB)"
)
# A resource name: cpu, memory, ephemeral-storage, hugepages-2Mi, or a qualified extended resource such as
# nvidia.com/gpu (an optional DNS-subdomain prefix and a name part).
RESOURCE_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
MAX_RESOURCES = 32

_QUANTITY_RE = re.compile(QUANTITY)
_RESOURCE_NAME_RE = re.compile(RESOURCE_NAME)
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


def parse_quantity(value: object) -> Decimal | None:
    """The value of a non-negative Kubernetes quantity (``"500m"`` -> 0.5), or None if it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value) if value >= 0 else None
    m = _QUANTITY_RE.match(value) if isinstance(value, str) and len(value) <= QUANTITY_MAX_LENGTH else None
    if m is None:
        return None
    number, suffix = m.group(1), m.group(2) or ""
    try:
        if suffix in _SUFFIX:
            return Decimal(number) * _SUFFIX[suffix]
        return Decimal(number) * Decimal(10) ** int(suffix[1:])  # an exponent: 1e3
    except (ArithmeticError, ValueError):
        return None


def _quantity(value: object) -> object:
    if parse_quantity(value) is None:
        raise PydanticCustomError("quantity", f"{value!r} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi)")
    return value


def _resource_name(value: object) -> object:
    if not isinstance(value, str) or len(value) > 253 or not _RESOURCE_NAME_RE.match(value):
        raise PydanticCustomError(
            "resource_name",
            f"{value!r} is not a resource name (e.g. cpu, memory, ephemeral-storage, nvidia.com/gpu)",
        )
    return value


DNS_LABEL_ADVICE = (
    "must be a DNS-1123 label: lowercase letters, digits and '-', starting and ending with a letter or digit"
)
Name = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63),
    Advice(DNS_LABEL, DNS_LABEL_ADVICE, dns_label_example),
]
Quantity = Annotated[
    str | int,
    BeforeValidator(_quantity),
    Field(
        json_schema_extra={
            "x-kubernetes-int-or-string": True,
            "maxLength": QUANTITY_MAX_LENGTH,
            # The API server's own quantity parser (CEL, Kubernetes 1.28+) rather than a pattern, so a bad
            # value is refused with advice instead of a regular expression.
            "x-kubernetes-validations": [cel(QUANTITY_RULE, QUANTITY_ADVICE)],
        }
    ),
]
ResourceName = Annotated[str, BeforeValidator(_resource_name)]

# Defaults every pod gets unless its part of the spec says otherwise (docs/security.md, "Defaults").
DEFAULT_PROBE_TIMEOUT_SECONDS = 5
DEFAULT_TMP_SIZE_LIMIT = "1Gi"
DEFAULT_MODEL_VOLUME_SIZE_LIMIT = "64Gi"
DEFAULT_TRITON_MEMORY_LIMIT = "16Gi"  # a model server's memory limit unless its resources say otherwise


def _probe_timeout() -> Any:
    return Field(
        DEFAULT_PROBE_TIMEOUT_SECONDS,
        ge=1,
        le=60,
        description=(
            "Seconds each readiness, liveness and startup probe may take before it counts as failed "
            "(Kubernetes' own default, 1 s, fails a busy but healthy process)."
        ),
    )


def _tmp_size_limit() -> Any:
    return Field(
        DEFAULT_TMP_SIZE_LIMIT,
        description=(
            "Size limit of the pod's writable /tmp (an emptyDir; the root filesystem is read-only). A pod "
            "that writes more is evicted, so one runaway process cannot fill the node's disk."
        ),
    )


# --------------------------------------------------------------------------------------------- shared pieces


class Priority(StrEnum):
    critical = "critical"
    high = "high"
    normal = "normal"
    low = "low"
    batch = "batch"


class SLO(_Model):
    """The service level the workflow must meet end to end."""

    p95LatencyMs: int = Field(
        1000, ge=1, le=3_600_000, description="End-to-end p95 latency target in milliseconds."
    )
    targetThroughputRps: float = Field(
        10.0, gt=0, le=1_000_000, description="Requests per second the workflow must sustain."
    )


class SecretKeyRef(_Model):
    """A key in a Secret in the workflow's namespace."""

    name: Name = Field(description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


class Queue(_Model):
    """Where steps hand work to each other: a Redis server (one stream per step)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "has(self.redisUrl) != has(self.redisSecretRef)",
                    "spec.queue: set exactly one of redisUrl or redisSecretRef",
                )
            ]
        }
    )

    redisUrl: (
        Annotated[
            str,
            StringConstraints(max_length=2048),
            Advice(REDIS_URL, "must be a Redis URL: redis://<host>:<port>/<db>, or rediss:// for TLS"),
            Advice(
                REDIS_URL_CREDENTIALS,
                "must not carry credentials (user:password@ or ?password=): every pod would show them as a "
                "plain environment value; put the whole URL in a Secret and name it in "
                "spec.queue.redisSecretRef instead",
                forbid=True,
                echo=False,
            ),
        ]
        | None
    ) = Field(
        None,
        description=(
            "Redis URL without credentials, e.g. redis://redis.agentscale-system:6379/0. A URL with a "
            "password goes in a Secret: use redisSecretRef."
        ),
    )
    redisSecretRef: SecretKeyRef | None = Field(
        None, description="A Secret key holding the Redis URL (when it carries credentials)."
    )


class GPUSharing(StrEnum):
    Exclusive = "Exclusive"
    TimeSliced = "TimeSliced"


class GPU(_Model):
    """GPUs for each pod: whole GPUs (count), one MIG slice (migProfile), or a time-sliced share."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!(has(self.count) && has(self.migProfile))",
                    "gpu: set either count (whole GPUs) or migProfile (one MIG slice), not both",
                ),
                cel(
                    "has(self.count) || has(self.migProfile)",
                    "gpu: set count (whole GPUs) or migProfile (one MIG slice)",
                ),
                cel(
                    "!has(self.migProfile) || self.sharing == 'Exclusive'",
                    "gpu.sharing: TimeSliced applies to whole GPUs; remove it or remove migProfile",
                ),
            ]
        }
    )

    count: int | None = Field(
        None, ge=1, le=16, description="Whole GPUs per pod (resource nvidia.com/gpu). Excludes migProfile."
    )
    migProfile: (
        Annotated[
            str,
            StringConstraints(max_length=32),
            Advice(
                r"^[1-7]g\.[0-9]+gb(\.me)?$",
                "must be a MIG profile as the NVIDIA device plugin names it: <slices>g.<memory>gb, e.g. "
                "1g.10gb, 3g.40gb or 1g.10gb.me",
            ),
        ]
        | None
    ) = Field(
        None,
        description="One MIG slice per pod, e.g. 1g.10gb (resource nvidia.com/mig-1g.10gb). Excludes count.",
    )
    product: (
        Annotated[
            str,
            StringConstraints(max_length=63),
            Advice(
                r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
                "must be a label value as GPU feature discovery writes it: letters, digits, '-', '_' and "
                "'.', e.g. NVIDIA-H100-80GB-HBM3 (spaces become '-')",
                lambda v: "-".join(v.split()),
            ),
        ]
        | None
    ) = Field(
        None,
        description=(
            "GPU model to pin to, as GPU feature discovery labels it (nvidia.com/gpu.product), "
            "e.g. NVIDIA-H100-80GB-HBM3."
        ),
    )
    sharing: GPUSharing = Field(
        GPUSharing.Exclusive,
        description=(
            "Exclusive requests nvidia.com/gpu; TimeSliced requests nvidia.com/gpu.shared "
            "(device plugin time-slicing with renameByDefault)."
        ),
    )


class Resources(_Model):
    """CPU and memory for each container, as Kubernetes quantities."""

    requests: dict[ResourceName, Quantity] = Field(
        default_factory=dict,
        max_length=MAX_RESOURCES,
        description=(
            "Requests, e.g. {cpu: 500m, memory: 512Mi}. Keys are resource names, values Kubernetes "
            "quantities (an integer or a string such as 500m, 2, 1.5Gi)."
        ),
    )
    limits: dict[ResourceName, Quantity] = Field(
        default_factory=dict,
        max_length=MAX_RESOURCES,
        description="Limits, e.g. {memory: 1Gi}; the same form as requests.",
    )


class Rightsizing(_Model):
    """In-place right-sizing of the part's CPU and memory requests from observed usage (off by default).

    The resource controller resizes each running pod's main container through the ``resize`` subresource
    (Kubernetes 1.33+, no restart): CPU to the usage percentile over the window x (1 + margin), memory to
    the window's peak x (1 + margin), each at least its minimum and at most the container's limit. GPU
    resources are never touched; the pod template keeps the spec's requests (docs/tuning.md, Right-sizing)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "type(self.minCpu) == int ? self.minCpu > 0 : "
                    "(isQuantity(self.minCpu) && quantity(self.minCpu).isGreaterThan(quantity('0')))",
                    "rightsizing.minCpu must be above zero, e.g. 50m",
                ),
                cel(
                    "type(self.minMemory) == int ? self.minMemory > 0 : "
                    "(isQuantity(self.minMemory) && quantity(self.minMemory).isGreaterThan(quantity('0')))",
                    "rightsizing.minMemory must be above zero, e.g. 64Mi",
                ),
            ]
        }
    )

    enabled: bool = Field(False, description="Resize this part's pods from observed usage.")
    percentile: int = Field(
        95,
        ge=50,
        le=100,
        description="CPU: the usage percentile over the window to size for (100: the peak).",
    )
    margin: float = Field(
        0.2,
        ge=0,
        le=10,
        description="Headroom over the observed value, as a fraction (0.2: 20% above it).",
    )
    windowSeconds: int = Field(
        3600,
        ge=30,
        le=7 * 24 * 3600,
        description=(
            "How far back usage is observed, and the least time between two changes of the part's "
            "requests (so at most one resize per pod per window)."
        ),
    )
    minCpu: Quantity = Field("50m", description="The CPU request never goes below this.")
    minMemory: Quantity = Field("64Mi", description="The memory request never goes below this.")

    @field_validator("minCpu", "minMemory")
    @classmethod
    def _above_zero(cls, value: str | int, info: Any) -> str | int:
        if not parse_quantity(value):
            example = "50m" if info.field_name == "minCpu" else "64Mi"
            raise PydanticCustomError(
                "rightsizing_min", f"rightsizing.{info.field_name} must be above zero, e.g. {example}"
            )
        return value

    def floors(self) -> tuple[float, float]:
        """(minCpu in cores, minMemory in bytes)."""
        return float(parse_quantity(self.minCpu) or 0), float(parse_quantity(self.minMemory) or 0)


def _rightsizing_with_hpa(rightsizing: Rightsizing, scaling: Scaling) -> None:
    """The pydantic side of ``_RIGHTSIZING_NOT_HPA`` (the operator validates what CEL validates)."""
    if rightsizing.enabled and scaling.hpa_owns_replicas():
        raise PydanticCustomError("rightsizing_hpa", _RIGHTSIZING_NOT_HPA["message"])


_RIGHTSIZING_NOT_HPA = cel(
    "!self.rightsizing.enabled || self.scaling.mode != 'hpa'",
    "rightsizing cannot be enabled in scaling mode hpa: the HPA's CPU utilization is usage / request, so "
    "resizing the request moves its signal; use mode queue or slo, or leave rightsizing off",
)


def _rightsizing() -> Any:
    return Field(
        default_factory=Rightsizing,
        description=(
            "Resize this part's running pods in place (CPU and memory requests) from observed usage; off "
            "unless enabled. See docs/tuning.md, Right-sizing."
        ),
    )


class ScalingMode(StrEnum):
    fixed = "fixed"
    hpa = "hpa"
    queue = "queue"
    slo = "slo"


class Scaling(_Model):
    """How many replicas run and what moves that number."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.minReplicas <= self.maxReplicas",
                    "scaling: minReplicas must be less than or equal to maxReplicas",
                ),
                cel(
                    "self.mode != 'fixed' || (self.replicas >= self.minReplicas "
                    "&& self.replicas <= self.maxReplicas)",
                    "scaling.replicas must lie within [minReplicas, maxReplicas]",
                ),
            ]
        }
    )

    mode: ScalingMode = Field(
        ScalingMode.fixed,
        description=(
            "fixed: exactly `replicas`. hpa: a HorizontalPodAutoscaler on CPU utilization. "
            "queue: the resource controller scales on queue lag (steps) or queue time (models). "
            "slo: the resource controller scales to hold the workflow's p95 latency."
        ),
    )
    replicas: int = Field(1, ge=0, le=1000, description="Replicas in mode fixed.")
    minReplicas: int = Field(1, ge=0, le=1000, description="Lower bound for autoscaled modes.")
    maxReplicas: int = Field(10, ge=1, le=1000, description="Upper bound for autoscaled modes.")
    targetCPUUtilization: int = Field(
        70, ge=1, le=100, description="Mode hpa: average CPU utilization (% of requests) to hold."
    )
    targetQueueLagPerReplica: int = Field(
        20, ge=1, le=1_000_000, description="Mode queue, steps: waiting messages per replica to hold."
    )
    targetQueueTimeMs: int = Field(
        20, ge=1, le=600_000, description="Mode queue, models: Triton queue time (ms) to hold."
    )
    scaleDownStabilizationSeconds: int = Field(
        120, ge=0, le=3600, description="Wait this long at a lower recommendation before scaling down."
    )

    # -- who owns spec.replicas, and within what bounds: the one home for these rules -------------------

    def operator_owns_replicas(self) -> bool:
        """The operator's reconcile writes ``spec.replicas`` (mode fixed) rather than an autoscaler."""
        return self.mode == ScalingMode.fixed

    def hpa_owns_replicas(self) -> bool:
        """A HorizontalPodAutoscaler owns ``spec.replicas`` (mode hpa)."""
        return self.mode == ScalingMode.hpa

    def controller_owns_replicas(self) -> bool:
        """The resource controller owns ``spec.replicas`` (modes queue and slo)."""
        return self.mode in (ScalingMode.queue, ScalingMode.slo)

    def rendered_replicas(self) -> int | None:
        """What the renderer writes into ``spec.replicas``: the count in mode fixed, None where an
        autoscaler owns the field (omitted from the applied object, so server-side apply leaves it alone)."""
        return self.replicas if self.operator_owns_replicas() else None

    def bounds(self) -> tuple[int, int]:
        """[min, max] replicas this part may run: exactly ``replicas`` in mode fixed, an HPA's floor is at
        least 1 (an HPA cannot scale to zero), the spec's bounds otherwise."""
        if self.operator_owns_replicas():
            return self.replicas, self.replicas
        if self.hpa_owns_replicas():
            return max(1, self.minReplicas), self.maxReplicas
        return self.minReplicas, self.maxReplicas

    def clamp(self, replicas: int) -> int:
        """``replicas`` moved into :meth:`bounds`."""
        lo, hi = self.bounds()
        return min(max(replicas, lo), hi)

    def nominal_replicas(self) -> int:
        """Replicas to count before anything is observed (GPU totals, status floors): the fixed count or
        the lower bound."""
        return self.bounds()[0]


class BatchKind(StrEnum):
    AUTO = "AUTO"
    GPU = "GPU"
    CPU = "CPU"


class InstanceGroup(_Model):
    """Model instances per Triton server (Triton instance_group)."""

    count: int = Field(1, ge=1, le=64, description="Instances of the model per server.")
    kind: BatchKind = Field(
        BatchKind.AUTO, description="Where instances run; AUTO picks GPU when the model requests one."
    )


class DynamicBatching(_Model):
    """Triton's server-side dynamic batcher."""

    preferredBatchSizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=list,
        max_length=16,
        description="Batch sizes the batcher tries to form, each at most maxBatchSize.",
    )
    maxQueueDelayMicroseconds: int = Field(
        100, ge=0, le=10_000_000, description="Longest a request waits for a batch to fill."
    )
    preserveOrdering: bool = Field(False, description="Return responses in request order.")


class Backend(StrEnum):
    python = "python"
    onnxruntime = "onnxruntime"
    pytorch = "pytorch"
    tensorflow = "tensorflow"
    tensorrt = "tensorrt"
    openvino = "openvino"


class EnvVar(_Model):
    """An environment variable; valueFrom takes a Kubernetes EnvVarSource."""

    name: Annotated[
        str,
        StringConstraints(min_length=1, max_length=253),
        Advice(
            r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
            "must be an environment variable name: letters, digits, '_', '-' and '.', not starting with a "
            "digit",
            lambda v: "_".join(v.split()).lstrip("0123456789"),
        ),
    ] = Field(description="Variable name.")
    value: str | None = Field(None, description="Literal value.")
    valueFrom: dict[str, Any] | None = Field(
        None,
        description="A Kubernetes EnvVarSource (secretKeyRef, configMapKeyRef, fieldRef, ...).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


# --------------------------------------------------------------------------------------------- models


class ModelServer(_Model):
    """A model the workflow calls, served by NVIDIA Triton (one Deployment and Service per entry)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.dynamicBatching) || self.maxBatchSize > 0",
                    "dynamicBatching needs maxBatchSize > 0 (Triton only batches models that accept a batch)",
                ),
                cel(
                    "!has(self.dynamicBatching) || "
                    "self.dynamicBatching.preferredBatchSizes.all(b, b <= self.maxBatchSize)",
                    "dynamicBatching.preferredBatchSizes must each be at most maxBatchSize",
                ),
                _RIGHTSIZING_NOT_HPA,
            ]
        }
    )

    name: Name = Field(description="Model name, as Triton knows it; a DNS-1123 label.")
    image: str = Field(DEFAULT_TRITON_IMAGE, min_length=1, max_length=512, description="Triton image.")
    modelRepository: Annotated[
        str,
        StringConstraints(min_length=1, max_length=1024),
        Advice(
            r"^(file:///|/|pvc://)",
            "must say where the model lives: an absolute path inside the image (/models or file:///models) "
            "or a PersistentVolumeClaim (pvc://<claim>/<path>)",
            lambda v: "/" + v.lstrip("./") if "://" not in v else "",
        ),
    ] = Field(
        description=(
            "Where the model lives: a path inside the image (file:///models or /models) or on a "
            "PersistentVolumeClaim (pvc://<claim>/<path>). The model is read from <repository>/<name>."
        ),
    )
    backend: Backend = Field(Backend.python, description="Triton backend that runs the model.")
    maxBatchSize: int = Field(
        8, ge=0, le=65536, description="Largest batch Triton may form; 0 disables batching."
    )
    dynamicBatching: DynamicBatching | None = Field(
        None, description="Server-side dynamic batching; omit to run each request on its own."
    )
    instanceGroups: list[InstanceGroup] = Field(
        default_factory=lambda: [InstanceGroup()],
        min_length=1,
        max_length=8,
        description="Model instances per server.",
    )
    parameters: dict[str, str] = Field(
        default_factory=dict, description="String parameters passed to the model (config.pbtxt parameters)."
    )
    gpu: GPU | None = Field(None, description="GPUs per server pod; omit to run on CPU.")
    resources: Resources = Field(
        default_factory=Resources,
        description=(
            "CPU and memory per server pod. Unset: requests cpu 1, memory 2Gi; memory limit 16Gi (or the "
            "memory request, if larger); no CPU limit."
        ),
    )
    probeTimeoutSeconds: int = _probe_timeout()
    tmpSizeLimit: Quantity = _tmp_size_limit()
    modelVolumeSizeLimit: Quantity = Field(
        DEFAULT_MODEL_VOLUME_SIZE_LIMIT,
        description=(
            "Size limit of the emptyDir the model is copied into before Triton starts (/models). Raise it "
            "for models larger than this; a pod whose copy exceeds it is evicted."
        ),
    )
    scaling: Scaling = Field(default_factory=Scaling, description="Replicas of the model server.")
    rightsizing: Rightsizing = _rightsizing()
    placement: Placement | None = Field(
        None,
        description=(
            "Nodes this model's server pods may run on, merged over spec.placement (its nodeSelector "
            "keys win; tolerations are added)."
        ),
    )
    podAnnotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra annotations on every pod (sidecar injection, cost tags, test usage).",
    )
    responseCache: ResponseCache | None = Field(
        None,
        description=(
            "Triton's response cache for this model (off when omitted): identical requests are answered "
            "without running the model. See docs/tuning.md, Caching."
        ),
    )

    @model_validator(mode="after")
    def _rightsizing_not_hpa(self) -> ModelServer:
        _rightsizing_with_hpa(self.rightsizing, self.scaling)
        return self

    @model_validator(mode="after")
    def _cache_fits_in_memory(self) -> ModelServer:
        res = self.resources
        text = res.limits.get("memory")
        if text is None:  # the renderer's default limit, or the request where that is larger
            request = res.requests.get("memory", 0)
            big = (parse_quantity(request) or 0) > (parse_quantity(DEFAULT_TRITON_MEMORY_LIMIT) or 0)
            text = request if big else DEFAULT_TRITON_MEMORY_LIMIT
        limit = parse_quantity(text) or Decimal(0)
        problem = response_cache_memory_problem(self.responseCache, limit, str(text))
        if problem:
            raise PydanticCustomError("cache_memory", problem)
        return self


# --------------------------------------------------------------------------------------------- steps


class ClientBatch(_Model):
    """Micro-batching in the step worker before it calls its model."""

    maxSize: int = Field(1, ge=1, le=65536, description="Largest batch a worker sends in one call.")
    maxWaitMs: int = Field(5, ge=0, le=60_000, description="Longest a message waits for a batch to fill.")


class LoadBalancing(StrEnum):
    least_outstanding = "least-outstanding"
    power_of_two = "power-of-two"
    peak_ewma = "peak-ewma"
    least_latency = "least-latency"
    round_robin = "round-robin"


class Step(_Model):
    """An agent step: a worker Deployment that consumes its queue, calls its model and feeds `next`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!self.next.exists(n, n == self.name)",
                    "a step cannot name itself in next (that is a cycle)",
                ),
                _RIGHTSIZING_NOT_HPA,
            ]
        }
    )

    name: Name = Field(description="Step name; a DNS-1123 label.")
    image: str = Field(DEFAULT_WORKER_IMAGE, min_length=1, max_length=512, description="Worker image.")
    command: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=64, description="Container command (entrypoint)."
    )
    args: list[Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=list, max_length=256, description="Container arguments."
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=128, description="Extra environment.")
    model: Name | None = Field(None, description="Name of the entry in spec.models this step calls.")
    concurrency: int = Field(8, ge=1, le=10_000, description="Messages one worker processes at once.")
    batch: ClientBatch = Field(default_factory=ClientBatch, description="Client-side micro-batching.")
    loadBalancing: LoadBalancing = Field(
        LoadBalancing.least_outstanding,
        description=(
            "How a worker spreads calls across model replicas: least-outstanding, least-latency (latency "
            "estimate x calls in flight; best for replicas of unequal speed), power-of-two, peak-ewma "
            "(Finagle's variant), or round-robin."
        ),
    )
    maxDeliveries: int = Field(
        5, ge=1, le=100, description="Attempts before a message goes to the dead-letter stream."
    )
    resources: Resources = Field(
        default_factory=Resources,
        description=(
            "CPU and memory per worker pod. Unset: requests cpu 100m, memory 128Mi; memory limit 1Gi (or "
            "the memory request, if larger); no CPU limit."
        ),
    )
    probeTimeoutSeconds: int = _probe_timeout()
    tmpSizeLimit: Quantity = _tmp_size_limit()
    gpu: GPU | None = Field(None, description="GPUs per worker pod (most steps need none).")
    scaling: Scaling = Field(default_factory=Scaling, description="Replicas of the worker.")
    rightsizing: Rightsizing = _rightsizing()
    placement: Placement | None = Field(
        None,
        description=(
            "Nodes this step's worker pods may run on, merged over spec.placement (its nodeSelector "
            "keys win; tolerations are added)."
        ),
    )
    podAnnotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra annotations on every pod (sidecar injection, cost tags, test usage).",
    )
    next: list[Name] = Field(
        default_factory=list,
        max_length=MAX_NEXT,
        description="Steps this one feeds (the workflow is a DAG; a step with several inputs joins them).",
    )
    resultCache: ResultCache | None = Field(
        None,
        description=(
            "Keep this step's outputs in Redis by input, so a repeated input skips the step (off when "
            "omitted). The step must be deterministic in its input. See docs/tuning.md, Caching."
        ),
    )

    @model_validator(mode="after")
    def _rightsizing_not_hpa(self) -> Step:
        _rightsizing_with_hpa(self.rightsizing, self.scaling)
        return self


class Gateway(_Model):
    """The HTTP entry of the workflow (sync runs, submit-then-poll, admission control)."""

    enabled: bool = Field(True, description="Render the gateway Deployment and Service.")
    image: str = Field(DEFAULT_WORKER_IMAGE, min_length=1, max_length=512, description="Gateway image.")
    replicas: int = Field(1, ge=1, le=100, description="Gateway replicas.")
    validator: Annotated[
        str,
        StringConstraints(max_length=256),
        Advice(
            r"^$|^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$",
            "must name a function as package.module:function (e.g. myapp.checks:validate_input), or be empty",
        ),
    ] = Field(
        "",
        description=(
            "A function in the gateway image that checks each run's input before it is queued, as "
            "package.module:function (it returns an error message or None; a message becomes a 422). "
            "Empty: any JSON input is accepted."
        ),
    )
    resources: Resources = Field(
        default_factory=Resources,
        description=(
            "CPU and memory per gateway pod. Unset: requests cpu 100m, memory 128Mi; memory limit 1Gi (or "
            "the memory request, if larger); no CPU limit."
        ),
    )
    placement: Placement | None = Field(
        None,
        description=(
            "Nodes the gateway pods may run on, merged over spec.placement (its nodeSelector keys "
            "win; tolerations are added)."
        ),
    )
    auth: GatewayAuth = Field(
        default_factory=GatewayAuth,
        description=(
            "Bearer tokens for the gateway's clients, from a Secret (on by default; see docs/security.md)."
        ),
    )
    maxBodyBytes: int | None = Field(
        None,
        ge=1024,
        le=256 << 20,
        description=(
            "Largest request body the gateway reads, per POST (a larger one is refused with 413 before it "
            "is read). Unset: the gateway's default, 1 MiB. Raise it for runs with large inputs, and the "
            "gateway's memory limit with it."
        ),
    )
    probeTimeoutSeconds: int = _probe_timeout()
    tmpSizeLimit: Quantity = _tmp_size_limit()
    podAnnotations: dict[str, Annotated[str, Field(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=64,
        description="Extra annotations on every pod (sidecar injection, cost tags, test usage).",
    )

    def tokens_secret(self, workflow: str) -> str | None:
        """The Secret the gateway's tokens come from; None when authentication is off."""
        if not self.auth.enabled:
            return None
        return self.auth.tokensSecret or f"{workflow}-{GATEWAY_PART}-tokens"


# --------------------------------------------------------------------------------------------- the spec

_UNIQUE_STEPS = "self.steps.all(s, self.steps.exists_one(t, t.name == s.name))"
_UNIQUE_MODELS = "self.models.all(m, self.models.exists_one(n, n.name == m.name))"


class AgentWorkflowSpec(_Model):
    """What the workflow runs and the service level it must meet."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(_UNIQUE_STEPS, "spec.steps: step names must be unique", "", "FieldValueInvalid"),
                cel(_UNIQUE_MODELS, "spec.models: model names must be unique", "", "FieldValueInvalid"),
                cel(
                    "self.steps.all(s, !has(s.model) || self.models.exists(m, m.name == s.model))",
                    "spec.steps[].model must name an entry of spec.models; add the model or fix the name",
                    "",
                    "FieldValueInvalid",
                ),
                cel(
                    "self.steps.all(s, s.next.all(n, self.steps.exists(t, t.name == n)))",
                    "spec.steps[].next must name steps defined in spec.steps; add the step or fix the name",
                    "",
                    "FieldValueInvalid",
                ),
                cel(
                    "self.steps.all(s, !self.models.exists(m, m.name == s.name))",
                    "a step and a model cannot share a name (both become <workflow>-<name> objects); "
                    "rename one",
                    "",
                    "FieldValueInvalid",
                ),
                cel(
                    "self.steps.all(s, s.name != 'gateway') && self.models.all(m, m.name != 'gateway')",
                    "'gateway' is reserved for the workflow's gateway; rename the step or model",
                    "",
                    "FieldValueInvalid",
                ),
            ]
        }
    )

    slo: SLO = Field(default_factory=SLO, description="Service level the workflow must meet.")
    priority: Priority = Field(
        Priority.normal,
        description=(
            "Workflow priority, the level of its ordinary requests: under load the gateway sheds requests "
            "below it first, and requests above it overtake queued runs at every step."
        ),
    )
    priorityClassName: str | None = Field(
        None, max_length=253, description="PriorityClass for every pod of the workflow (must exist)."
    )
    queue: Queue = Field(description="The Redis server that carries messages between steps.")
    serviceAccount: ServiceAccountSpec = Field(
        default_factory=ServiceAccountSpec,
        description="The identity of the workflow's pods (by default a ServiceAccount without an API token).",
    )
    networkPolicy: NetworkPolicySpec = Field(
        default_factory=NetworkPolicySpec,
        description=(
            "Traffic the workflow's pods accept and send (by default only the gateway takes traffic from "
            "outside the workflow)."
        ),
    )
    placement: Placement | None = Field(
        None,
        description=(
            "Nodes every pod of the workflow may run on (nodeSelector, tolerations); a step, model or the "
            "gateway may refine it with its own placement. GPU pods also get their GPU's node selection."
        ),
    )
    gateway: Gateway = Field(default_factory=Gateway, description="The workflow's HTTP entry.")
    models: list[ModelServer] = Field(
        default_factory=list,
        max_length=MAX_MODELS,
        description="Triton model servers the steps call.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    steps: list[Step] = Field(
        min_length=1,
        max_length=MAX_STEPS,
        description="The agent steps; `next` links them into a DAG.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


# --------------------------------------------------------------------------------------------- status
#
# The operator builds status through these models, which forbid unknown keys like the spec models do: a key
# the CRD schema lacks (and the API server would silently prune) fails at construction, in the unit tests.
# A status written by an older operator is read with ``AgentWorkflowStatus.read``, which ignores keys this
# version no longer knows.

# The condition types the operator writes, and when each is True (rendered into docs/api.md).
CONDITIONS: dict[str, str] = {
    "Ready": (
        "Every step, model and the gateway has its desired replicas updated and ready. When False, the "
        "reason is the most pressing cause: GPUCapacityShort, the reason of Unschedulable (e.g. "
        "InsufficientCPU), ApplyFailed, GatewayTokensMissing, InvalidSpec or ReplicasNotReady."
    ),
    "Progressing": "A child is missing, rolling out, or waiting for replicas.",
    "Degraded": (
        "The spec is invalid (InvalidSpec; the message names the field or the cycle), the API server "
        "rejected an object (ApplyFailed), the gateway's pods cannot start because the Secret with its "
        "bearer tokens does not exist (GatewayTokensMissing; the message has the kubectl command that "
        "creates it), or a Deployment exceeded its progress deadline."
    ),
    "GPUCapacityShort": (
        "Pods cannot be scheduled for lack of nvidia.com/gpu or MIG slices (reason InsufficientGPU); the "
        "message names the pods, the GPUs each needs, the total short and the scheduler's own words."
    ),
    "Unschedulable": (
        "Pods cannot be scheduled for any reason other than a GPU shortage (that is GPUCapacityShort). The "
        "reason names what is short or what does not match: InsufficientCPU, InsufficientMemory, "
        "InsufficientResource, TooManyPods, UntoleratedTaint, NodeSelectorMismatch, NodesCordoned, "
        "PodAffinityConflict, TopologySpreadConflict, or Unschedulable; the message names the pods, what "
        "they request, the scheduler's own words and what to do."
    ),
}


class Condition(_Model):
    """A Kubernetes-style condition."""

    type: str = Field(description=f"The condition: {', '.join(CONDITIONS)}.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field("", description="One CamelCase word.")
    message: str = Field("", description="What happened, in words a person can act on.")
    lastTransitionTime: str = Field("", description="When status last changed (RFC 3339).")
    observedGeneration: int = Field(0, description="The spec generation this condition describes.")


class ReplicaStatus(_Model):
    """Replicas of one step or model server."""

    desired: int = Field(0, description="Replicas the Deployment asks for.")
    ready: int = Field(0, description="Replicas ready to serve.")
    pending: int = Field(0, description="Pods that cannot be scheduled.")


class ScalingDecision(_Model):
    """The last replica change the operator or resource controller made."""

    time: str = Field("", description="When (RFC 3339).")
    target: str = Field("", description="step/<name> or model/<name>.")
    fromReplicas: int = Field(0, description="Replicas before.")
    toReplicas: int = Field(0, description="Replicas after.")
    reason: str = Field("", description="Why.")


class PartScaling(_Model):
    """The resource controller's last replica change of one step or model server, and why."""

    time: str = Field("", description="When (RFC 3339).")
    fromReplicas: int = Field(0, description="Replicas before.")
    desired: int = Field(0, description="Replicas the controller set.")
    rule: str = Field("", description="The rule that set the number (QueueLag, LatencyBudget, Panic, ...).")
    reason: str = Field("", description="Why, in one line with the numbers.")


class Requests(_Model):
    """CPU and memory requests of one container, as Kubernetes quantities."""

    cpu: str = Field("", description="CPU, e.g. 250m.")
    memory: str = Field("", description="Memory, e.g. 300Mi.")


class RightsizingStatus(_Model):
    """What right-sizing observed and decided for one step or model server."""

    time: str = Field("", description="When the recommendation last changed (RFC 3339).")
    observed: Requests = Field(
        default_factory=Requests, description="CPU usage percentile and memory peak over the window."
    )
    recommended: Requests = Field(
        default_factory=Requests, description="The requests the part's pods are resized to."
    )
    resizedPods: int = Field(0, description="Pods resized in place when the recommendation last changed.")
    reason: str = Field("", description="Why, in one line (cpu p95 180m x1.2 = 216m; 500m -> 216m).")


class AgentWorkflowStatus(_Model):
    """What the operator observed."""

    observedGeneration: int = Field(0, description="The spec generation the status describes.")
    conditions: list[Condition] = Field(
        default_factory=list, description=f"{', '.join(CONDITIONS)}; one entry per type."
    )
    steps: dict[str, ReplicaStatus] = Field(default_factory=dict, description="Per-step replicas.")
    models: dict[str, ReplicaStatus] = Field(default_factory=dict, description="Per-model replicas.")
    stepsReady: str = Field("", description="Steps with all desired replicas ready, e.g. 3/3.")
    modelsReady: str = Field("", description="Models with all desired replicas ready, e.g. 2/2.")
    gpus: int = Field(
        0, description="GPUs (whole or MIG slices) the workflow's pods request at desired scale."
    )
    lastScalingDecision: ScalingDecision | None = Field(None, description="The last replica change.")
    scaling: dict[str, PartScaling] = Field(
        default_factory=dict,
        description=(
            "Per part (step/<name>, model/<name>) in mode queue or slo, written by the resource controller: "
            "the desired replicas it last set and why."
        ),
    )
    rightsizing: dict[str, RightsizingStatus] = Field(
        default_factory=dict,
        description=(
            "Right-sizing per part (step/<name>, model/<name>), written by the resource controller: "
            "observed usage, recommended requests and why."
        ),
    )
    endpoints: dict[str, str] = Field(default_factory=dict, description="Where to send requests.")

    @classmethod
    def read(cls, raw: Any) -> AgentWorkflowStatus:
        """A status as stored, leniently: keys an older (or newer) operator wrote and this one does not know
        are ignored rather than refused."""
        return cls.model_validate(raw or {}, extra="ignore")

    def to_dict(self) -> dict[str, Any]:
        """The status as written to the API server: only what was set, so keys the operator does not own
        (``lastScalingDecision``) or does not produce here (``endpoints`` without a gateway) stay out."""
        return self.model_dump(mode="json", exclude_unset=True)


class AgentWorkflow(_Model):
    """An AI agent workflow: models, the steps that call them, and its service level."""

    model_config = ConfigDict(extra="ignore")

    apiVersion: str = Field(API_VERSION)
    kind: str = Field(KIND)
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: AgentWorkflowSpec
    status: AgentWorkflowStatus | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _read_status(cls, value: Any) -> Any:
        return AgentWorkflowStatus.read(value) if isinstance(value, dict) else value

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "default")
