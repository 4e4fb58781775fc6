"""A small async Kubernetes client on aiohttp: server-side apply, delete, status and scale patches, the
get / create / resourceVersion-checked replace that leader election's Lease needs, the list and pod
eviction that GPU rebalancing needs, and the in-place pod resize that right-sizing needs.

Why not a general client: kopf already brings aiohttp and a credential chain (kubeconfig, service account);
server-side apply is one PATCH with a content type, and dicts in and out keep the hot path free of model
(de)serialisation. Credentials come from kopf's own login functions so the operator and this client agree.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import socket
from dataclasses import dataclass
from typing import Any

import aiohttp
import kopf

from agentscale import kinds

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, body: dict[str, Any] | str, what: str) -> None:
        self.status = status
        self.body = body
        msg = body.get("message", "") if isinstance(body, dict) else body
        super().__init__(f"{what}: HTTP {status}: {msg}")

    @property
    def message(self) -> str:
        return str(self.body.get("message", "")) if isinstance(self.body, dict) else str(self.body)

    @property
    def permanent(self) -> bool:
        """The request itself is wrong (invalid object, forbidden): retrying the same request won't help."""
        return self.status in (400, 403, 422)


def object_path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    plural = kinds.lookup(api_version, kind).plural
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}"
    return f"{path}/{name}" if name else path


@dataclass
class KubeClient:
    server: str
    session: aiohttp.ClientSession
    field_manager: str = "agentscale"

    @classmethod
    def from_connection(cls, info: kopf.ConnectionInfo, field_manager: str, limit: int = 32) -> KubeClient:
        connector = aiohttp.TCPConnector(
            ssl=info.as_ssl_context() if info.server.startswith("https") else False, limit=limit
        )
        session = aiohttp.ClientSession(
            connector=connector,
            headers={**info.as_http_headers(), "Accept": "application/json"},
            timeout=aiohttp.ClientTimeout(total=60),
        )
        return cls(server=info.server.rstrip("/"), session=session, field_manager=field_manager)

    async def close(self) -> None:
        await self.session.close()

    async def _request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        retry_429: bool = True,
    ) -> dict[str, Any]:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else None
        for attempt in range(4):
            try:
                async with self.session.request(
                    method, self.server + path, params=params, data=data, headers=headers
                ) as resp:
                    text = await resp.text()
                    if ((resp.status == 429 and retry_429) or resp.status >= 500) and attempt < 3:
                        retry = float(resp.headers.get("Retry-After", 0.2 * 2**attempt))
                        await asyncio.sleep(min(retry, 5.0))
                        continue
                    if resp.status >= 400:
                        try:
                            parsed: dict[str, Any] | str = json.loads(text)
                        except ValueError:
                            parsed = text
                        raise ApiError(resp.status, parsed, what)
                    return json.loads(text) if text else {}
            except (TimeoutError, aiohttp.ClientConnectionError):
                if attempt == 3:
                    raise
                await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    async def apply(self, obj: dict[str, Any], force: bool = True) -> dict[str, Any]:
        """Server-side apply of a full object under our field manager."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        params = {"fieldManager": self.field_manager, "force": "true" if force else "false"}
        return await self._request(
            "PATCH",
            path,
            f"apply {obj['kind']} {meta['name']}",
            params=params,
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> bool:
        """Delete in the background (dependents go with it). False if it was already gone."""
        try:
            await self._request(
                "DELETE",
                object_path(api_version, kind, namespace, name),
                f"delete {kind} {name}",
                body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"},
            )
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: Any) -> None:
        path = object_path(api_version, kind, namespace, name) + "/status"
        await self._request(
            "PATCH",
            path,
            f"status of {kind} {name}",
            body={"status": status},
            content_type="application/merge-patch+json",
        )

    async def apply_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: Any, field_manager: str
    ) -> None:
        """Server-side apply (force) of only the ``status`` fields given, under ``field_manager``: entries
        of a list keyed by ``x-kubernetes-list-map-keys`` (conditions by type) that others own stay."""
        path = object_path(api_version, kind, namespace, name) + "/status"
        body = {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "status": status,
        }
        await self._request(
            "PATCH",
            path,
            f"apply status of {kind} {name}",
            params={"fieldManager": field_manager, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """One object, or None if it does not exist."""
        try:
            return await self._request("GET", object_path(api_version, kind, namespace, name), f"get {kind}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj``; ApiError 409 when it already exists (someone else created it first)."""
        meta = obj["metadata"]
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"))
        params = {"fieldManager": self.field_manager}
        return await self._request(
            "POST", path, f"create {obj['kind']} {meta['name']}", params=params, body=obj
        )

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace ``obj`` (PUT) under optimistic concurrency: ``metadata.resourceVersion`` must be the one
        read, else the API server answers ApiError 409 (someone else wrote it since)."""
        meta = obj["metadata"]
        if not meta.get("resourceVersion"):
            raise ValueError(f"replace {obj['kind']} {meta['name']}: metadata.resourceVersion is required")
        path = object_path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        params = {"fieldManager": self.field_manager}
        return await self._request(
            "PUT", path, f"replace {obj['kind']} {meta['name']}", params=params, body=obj
        )

    async def scale(self, namespace: str, name: str, replicas: int, field_manager: str | None = None) -> None:
        """Set a Deployment's replicas through its ``scale`` subresource, by server-side apply (force) under
        ``field_manager`` (default: this client's). An apply is recorded in ``managedFields`` (manager, Apply,
        subresource scale) even where nothing owned ``spec.replicas`` before; a merge patch there is not."""
        path = object_path("apps/v1", "Deployment", namespace, name) + "/scale"
        body = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas},
        }
        await self._request(
            "PATCH",
            path,
            f"scale Deployment {name}",
            params={"fieldManager": field_manager or self.field_manager, "force": "true"},
            body=body,
            content_type="application/apply-patch+yaml",
        )

    async def resize(
        self, namespace: str, name: str, container: str, requests: dict[str, str], field_manager: str
    ) -> None:
        """Change one container's requests of a running pod in place through the ``resize`` subresource
        (Kubernetes 1.33+; a strategic merge patch of ``spec.containers[].resources``)."""
        path = object_path("v1", "Pod", namespace, name) + "/resize"
        body = {"spec": {"containers": [{"name": container, "resources": {"requests": requests}}]}}
        await self._request(
            "PATCH",
            path,
            f"resize Pod {name}",
            params={"fieldManager": field_manager},
            body=body,
            content_type="application/strategic-merge-patch+json",
        )

    async def evict(self, namespace: str, name: str) -> bool:
        """Evict a pod through the ``pods/eviction`` subresource (a policy/v1 Eviction): the API server
        refuses with ApiError 429 while a PodDisruptionBudget allows no disruption (not retried here: the
        caller waits for its next cycle). False if the pod is already gone."""
        path = object_path("v1", "Pod", namespace, name) + "/eviction"
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
        }
        try:
            await self._request("POST", path, f"evict Pod {name}", body=body, retry_429=False)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def list(
        self, api_version: str, kind: str, namespace: str | None = None, **params: str
    ) -> list[dict[str, Any]]:
        """Every object of a kind (all namespaces when ``namespace`` is None), with ``params`` such as
        ``labelSelector`` or ``fieldSelector``; one page of up to 5,000 and its continuations."""
        out: list[dict[str, Any]] = []
        query = {"limit": "5000", **params}
        while True:
            page = await self._request(
                "GET", object_path(api_version, kind, namespace), f"list {kind}", params=query
            )
            out.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return out
            query = {**query, "continue": token}

    async def post_event(
        self, involved: dict[str, str], type_: str, reason: str, message: str, component: str = "agentscale"
    ) -> None:
        """Record a core/v1 Event about ``involved`` (apiVersion, kind, name, namespace, uid)."""
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        ns = involved["namespace"]
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{involved['name']}.", "namespace": ns},
            "involvedObject": involved,
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component},
            "reportingComponent": component,
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        await self._request("POST", object_path("v1", "Event", ns), f"event {reason}", body=body)
