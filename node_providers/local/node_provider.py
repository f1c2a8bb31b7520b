"""`ray up` / autoscaler entry point for local pools: the generic node provider over `LocalCloud`."""

from __future__ import annotations

from node_providers.local.cloud import LocalCloud
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider


class LocalNodeProvider(ScriptBootedNodeProvider):
    cloud_class = LocalCloud
    cloud: LocalCloud

    def terminate_nodes(self, node_ids: list[str]) -> None:  # type: ignore[override]
        """A whole pool ends at once: when `node_ids` hold every machine still running, all are
        powered off together (SIGKILL), not workers then head, each with a grace: no node stays
        behind to drain or to notice. Fewer (a node lost or scaled down) end as on any cloud."""
        ids = set(node_ids)
        running = {m.instance_id for m in self.machines(fresh=True) if m.active}
        if running and running <= ids:
            self.cloud.power_off(sorted(running))
        super().terminate_nodes(node_ids)  # the bookkeeping; what is already gone is skipped
