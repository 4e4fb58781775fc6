"""One leader per operator: the workflow controller's writes gated on the Lease the resource controller holds.

Several operator replicas may run; only the one holding the Lease writes. Both controllers share one
:class:`~agentscale.resource_controller.leader.LeaderElector` (constructed in ``handlers.py``), so one Lease,
``agentscale-resource-controller``, leads the whole replica. Why one and not a Lease per controller:

- one leader is what a person looks for: the Lease's ``holderIdentity`` (the pod name plus a suffix) names
  the replica doing all the writing, and the standby does none;
- both controllers act on the same cache in the same process, so the replica count the resource
  controller wrote and the children the workflow controller applies never race across two replicas;
- a takeover moves both at once, and one Lease costs one renewal every retry period, not two;
- the name is kept from when only the resource controller led, so replicas of an older release and of this
  one contend for the same Lease during a rolling upgrade.

The resource controller runs its cycles as the term's work; the workflow controller listens for a term's
start and end (``LeaderElector.add_listener``) and sends every write through :class:`LeaderOnlyClient`,
which asks ``is_leader`` (held and renewed within the renew deadline) right before each request, as the
resource controller's actuator asks ``may_write``. With the resource controller disabled the elector runs
on its own (``LeaderElector.start``). What a standby does and what a takeover re-queues:
``workflow_controller.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from agentscale.kube import KubeClient


class NotLeading(Exception):
    """A write refused because this replica does not hold the Lease (or its renewal is overdue)."""


class Leadership(Protocol):
    """What the workflow controller needs of the elector (``LeaderElector`` has it)."""

    @property
    def is_leader(self) -> bool: ...
    def add_listener(self, on_started: Callable[[], None], on_stopped: Callable[[], None]) -> None: ...


@dataclass
class LeaderOnlyClient(KubeClient):
    """A :class:`KubeClient` whose every request but a GET first asks ``may_write``, else raises
    :class:`NotLeading` without sending anything. Shares the wrapped client's session."""

    may_write: Callable[[], bool] = lambda: True

    @classmethod
    def of(cls, client: KubeClient, may_write: Callable[[], bool]) -> LeaderOnlyClient:
        return cls(client.server, client.session, client.field_manager, may_write)

    async def _request(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        if method != "GET" and not self.may_write():
            raise NotLeading(f"{what}: not the leader")
        return await super()._request(method, path, what, **kwargs)
