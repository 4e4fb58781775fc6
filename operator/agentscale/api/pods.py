"""What the workflow's pods run as and may reach: their ServiceAccount, the workflow's NetworkPolicy, and who
may call the gateway (its bearer tokens).

Both default to the least a workflow needs (no API token, traffic only inside the workflow except the
gateway's door); each field says what turning it up allows. The renderer reads these in
``render/identity.py``; docs/security.md explains the trust model around them.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints

from agentscale.api.base import Advice, Model, dns_label_example

DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS_SUBDOMAIN_ADVICE = (
    "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', starting and ending with a "
    "letter or digit"
)
MAX_PEERS = 16

# A NetworkPolicyPeer or NetworkPolicyEgressRule, passed through as Kubernetes defines it (the API server
# checks it when the operator applies the NetworkPolicy; a mistake is reported as ApplyFailed).
_Peer = Annotated[dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})]


class ServiceAccountSpec(Model):
    """The Kubernetes identity of every pod of the workflow."""

    name: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=253),
            Advice(DNS_SUBDOMAIN, DNS_SUBDOMAIN_ADVICE, dns_label_example),
        ]
        | None
    ) = Field(
        None,
        description=(
            "An existing ServiceAccount for every pod of the workflow; the operator neither creates nor "
            "deletes it. Omit: the operator creates <workflow>-workflow with no permissions."
        ),
    )
    automountToken: bool = Field(
        False,
        description=(
            "Mount the ServiceAccount's API token into every pod (and allow it on the ServiceAccount the "
            "operator creates). Off by default: the workflow's own code does not call the Kubernetes API, "
            "so a compromised step gets no credentials. Turn on only for custom images that do, and grant "
            "that ServiceAccount only what they need."
        ),
    )


class NetworkPolicySpec(Model):
    """Traffic the workflow's pods accept and send (rendered as NetworkPolicies <workflow>-workflow and
    <workflow>-gateway; enforced only where the cluster's network plugin implements NetworkPolicy)."""

    enabled: bool = Field(
        True,
        description=(
            "Render the NetworkPolicies. Off: the operator renders none (and removes those it made), and "
            "the namespace's own policies, if any, apply."
        ),
    )
    gatewayFrom: list[_Peer] = Field(
        default_factory=list,
        max_length=MAX_PEERS,
        description=(
            "NetworkPolicyPeers (podSelector, namespaceSelector, ipBlock) that may reach the gateway's HTTP "
            "port. Empty: any source, inside or outside the cluster (the gateway is the workflow's door)."
        ),
    )
    metricsFrom: list[_Peer] = Field(
        default_factory=list,
        max_length=MAX_PEERS,
        description=(
            "NetworkPolicyPeers that may scrape the metrics ports (9090 on workers and the gateway, 8002 on "
            "model servers). Empty: any pod in any namespace of this cluster (namespaceSelector: {}), "
            "nothing outside it; name Prometheus' namespace here to narrow it."
        ),
    )
    redisPort: int | None = Field(
        None,
        ge=1,
        le=65535,
        description=(
            "The port the pods may reach Redis on. Default: the port in spec.queue.redisUrl, else 6379 "
            "(with redisSecretRef the operator cannot read the URL: set this when Redis listens elsewhere)."
        ),
    )
    redisTo: list[_Peer] = Field(
        default_factory=list,
        max_length=MAX_PEERS,
        description=(
            "NetworkPolicyPeers where Redis runs, e.g. its namespace. Empty: any address on redisPort."
        ),
    )
    extraEgress: list[_Peer] = Field(
        default_factory=list,
        max_length=MAX_PEERS,
        description=(
            "More NetworkPolicyEgressRules ({to, ports}) for every pod of the workflow, for steps that call "
            "services outside it (an LLM API, a database). Without one, the pods reach only DNS, Redis and "
            "the workflow's model servers."
        ),
    )


class GatewayAuth(Model):
    """Bearer-token authentication of the gateway: every route but /healthz, /readyz and /openapi.json needs
    ``Authorization: Bearer <token>``."""

    enabled: bool = Field(
        True,
        description=(
            "Require a bearer token. Off: anyone who reaches the gateway can submit runs and read any run's "
            "result; only for a network where every client is trusted (the gateway logs a warning at start)."
        ),
    )
    tokensSecret: (
        Annotated[
            str,
            StringConstraints(min_length=1, max_length=253),
            Advice(DNS_SUBDOMAIN, DNS_SUBDOMAIN_ADVICE, dns_label_example),
        ]
        | None
    ) = Field(
        None,
        description=(
            "The Secret in the workflow's namespace holding the tokens: each key is one client (its name "
            "in logs and for the fair share), each value one token of at least 16 characters (shorter ones "
            "are ignored). Mounted into the gateway pods, which re-read it every 5 s, so tokens rotate by "
            "adding a key and later removing the old one. The operator never reads or creates it: create "
            "it yourself (kubectl create secret generic <name> --from-literal=<client>=<token>); until it "
            "exists the gateway pods cannot start. Omit: <workflow>-gateway-tokens."
        ),
    )
