"""Elastic pools: Ray's v2 autoscaler, run in a daemon thread of the driver, on the pool's own node provider.

`sky.Compute(nodes=sky.Nodes(min=1, max=8))` launches the pool as usual (the launcher starts the
head and the first workers), then `ElasticScaler` runs Ray's v2 `Autoscaler` here, in the driver:
the only process that holds cloud credentials. No node ever runs an autoscaler that can start
machines (the head's own monitor is Ray's read-only one, as for every `ray start --head` without
an autoscaling config).

What the autoscaler gets, and why (Ray 2.60):

- the same cluster name and the same `provider:` section the launcher used, so it lists, adopts
  and tags the same machines; the provider object itself is shared with the launcher (one lock
  for node indexes) instead of being re-created by `_get_node_provider`;
- `disable_node_updaters: true`: our machines boot themselves from their script; with updaters on,
  the v2 autoscaler would SSH in to "install Ray" (ThreadedRayInstaller);
- `disable_launch_config_check: true`: nodes launched by the launcher carry no launch-config hash;
- node types named as the nodes' `RAY_NODE_TYPE_NAME` (`skyward.head`, `skyward.worker`), with the
  resources a node of the pool's offer advertises (read from a running node), so the scheduler
  knows what one more worker would add;
- min/max as worker counts of the worker type, `max_workers` as the global cap, and
  `idle_timeout_s` on the worker type (seconds; Ray's `idle_timeout_minutes` is too coarse).

Scale-up follows the demand Ray itself reports to the GCS (pending tasks, actors, placement
groups) and explicit requests (`request_nodes`, through `ray.autoscaler.v2.sdk`'s constraint
call). Scale-down drains idle workers through the GCS: a drained raylet exits, the node's boot
script ends its machine, and the autoscaler terminates the instance through the provider. A lost
worker drops the pool below demand or below `min`, and the autoscaler starts another: elastic
pools need no `NodeReplacer`.

`stop()` ends the loop and waits for every launch already handed to the provider, so teardown
(which ends everything by the cluster's tag) never races a machine being started.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from skyward_ray import names
from skyward_ray.cluster.boot_wait import alive_nodes
from skyward_ray.cluster.provisioning import create_worker
from skyward_ray.cluster.running import Cluster
from skyward_ray.console import console
from skyward_ray.planning.nodes import NodeInfo

# Ray's node status in the autoscaler's view (autoscaler.proto NodeStatus): RUNNING = 1, IDLE = 3
# (not DRAINING = 4 or DEAD = 2). Spelled as numbers so importing this module does not load Ray's protos.
_SERVING = (1, 3)


def autoscaling_config(cluster: Cluster, min_nodes: int, max_nodes: int, idle_timeout: float,
                       node_resources: dict[str, float], upscaling_speed: float | None = None) -> dict[str, Any]:
    """The cluster config Ray's v2 autoscaler reads: this pool's provider, one worker type, [min, max] nodes."""
    provider = {**cluster.provider.provider_config, "disable_node_updaters": True, "disable_launch_config_check": True}
    workers = max_nodes - 1
    commands = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files",
                "rsync_exclude", "rsync_filter"]
    return {
        "cluster_name": cluster.name,
        "max_workers": workers,
        # Launch what the demand needs at once (Ray's default 1.0 grows 1, 2, 4, ... per round).
        "upscaling_speed": upscaling_speed if upscaling_speed is not None else float(max(workers, 1)),
        "idle_timeout_minutes": idle_timeout / 60,
        "provider": provider,
        "auth": {},
        "available_node_types": {
            names.HEAD_TYPE: {"node_config": {}, "resources": dict(node_resources), "min_workers": 0, "max_workers": 0},
            names.WORKER_TYPE: {"node_config": {}, "resources": dict(node_resources), "min_workers": min_nodes - 1,
                                "max_workers": workers, "idle_timeout_s": float(idle_timeout)},
        },
        "head_node_type": names.HEAD_TYPE,
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **{key: [] for key in commands},
    }


def node_resources(resource_state: Any) -> dict[str, float]:
    """What one node of the pool advertises (a worker's if any, else the head's), without the
    per-node `node:<ip>` resources: what one more worker would add."""
    states = [s for s in resource_state.node_states if s.status in _SERVING]
    workers = [s for s in states if s.ray_node_type_name == names.WORKER_TYPE]
    source = (workers or states)[0]
    return {k: float(v) for k, v in source.total_resources.items() if not k.startswith("node:")}


class ElasticScaler:
    """Ray's v2 autoscaler for one pool, ticking in a daemon thread of the driver."""

    def __init__(self, cluster: Cluster, min_nodes: int, max_nodes: int, idle_timeout: float,
                 interval: float = 1.0) -> None:
        if not 1 <= min_nodes <= max_nodes:
            raise ValueError(f"elastic pool: need 1 <= min ({min_nodes}) <= max ({max_nodes})")
        assert cluster.driver is not None, "the pool's driver connection comes first"
        self.cluster = cluster
        self.min_nodes = min_nodes
        self.max_nodes = max_nodes
        self.idle_timeout = idle_timeout
        self.interval = interval
        self.history: list[tuple[float, int]] = []  # (time.time(), nodes serving) at each change
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="skyward-autoscaler", daemon=True)
        self._gcs: Any = None
        self._autoscaler: Any = None
        self._worker_bundle: dict[str, float] = {}

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> "ElasticScaler":
        from ray._raylet import GcsClient
        from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig, IConfigReader
        from ray.autoscaler.v2.sdk import get_cluster_resource_state

        _quiet_ray_autoscaler_logs()
        driver = self.cluster.driver
        assert driver is not None
        # Its own client (the heartbeat keeps the driver's); the connected driver's token is in the environment.
        self._gcs = GcsClient(address=driver.gcs_address)
        resources = node_resources(get_cluster_resource_state(self._gcs))
        self._worker_bundle = resources
        config = AutoscalingConfig(
            autoscaling_config(self.cluster, self.min_nodes, self.max_nodes, self.idle_timeout, resources),
            skip_content_hash=True)

        class _Fixed(IConfigReader):  # the config is made once, here; a refresh changes nothing
            def get_cached_autoscaling_config(self) -> AutoscalingConfig:
                return config

            def refresh_cached_autoscaling_config(self) -> None:
                pass

        self._autoscaler = _autoscaler_on(self.cluster.provider, self.cluster.name, _Fixed(), self._gcs)
        self._record(len(self.cluster.nodes))
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the loop, then wait for every launch or termination already handed to the provider."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)
        adapter = getattr(self._autoscaler, "_cloud_instance_provider", None)
        for executor in ("_main_executor", "_node_launcher_executors"):  # the main one feeds the launchers
            pool = getattr(adapter, executor, None)
            if pool is not None:
                pool.shutdown(wait=True)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    # -- requests --------------------------------------------------------------------------------
    def request_nodes(self, count: int) -> None:
        """Keep at least `count` nodes (within [min, max]) until another request replaces this one;
        `request_nodes(0)` withdraws it. Goes through Ray's v2 constraint call, so the autoscaler
        neither drains those nodes as idle nor needs a task to be waiting."""
        from ray.autoscaler.v2.sdk import request_cluster_resources

        driver = self.cluster.driver
        assert driver is not None
        count = max(0, min(count, self.max_nodes))
        # A whole node's CPUs and accelerators; not its memory, which Ray measures per machine.
        bundle = {k: v for k, v in self._worker_bundle.items() if k not in ("memory", "object_store_memory")}
        request_cluster_resources(driver.gcs_address, [{"resources": bundle}] * count)

    # -- the loop --------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                state = self._autoscaler.update_autoscaling_state()
                if state is not None and not self._stop.is_set():
                    self._gcs.report_autoscaling_state(state.SerializeToString())
                self._refresh_nodes()
            except Exception as error:  # the GCS busy, a provider hiccup: the next tick retries
                self.errors += 1
                if not self._stop.is_set() and self.errors in (1, 10, 100):
                    console.print(f"[yellow]autoscaler: {type(error).__name__}: {error} (retrying)[/]")
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _refresh_nodes(self) -> None:
        """`cluster.nodes` (hence `pool.nodes`): the nodes Ray lists running or idle now, head first."""
        from ray.autoscaler.v2.sdk import get_cluster_resource_state

        offer = self.cluster.offer
        nodes = []
        for state in get_cluster_resource_state(self._gcs).node_states:
            labels = dict(state.labels)
            if state.status not in _SERVING or names.INSTANCE_ID not in labels:
                continue
            nodes.append(NodeInfo(
                index=int(labels.get(names.NODE_INDEX, 0)), instance_id=labels[names.INSTANCE_ID],
                ray_node_id=state.node_id.hex(), ip=state.node_ip_address, provider=offer.provider,
                accelerator=offer.accelerator, accelerator_count=offer.count, spot=offer.market == "spot"))
        if not nodes or self._stop.is_set():
            return
        nodes.sort(key=lambda n: n.index)
        before = len(self.cluster.nodes)
        self.cluster.nodes = nodes
        if len(nodes) != before:
            self._record(len(nodes))
            console.print(f"[cyan]elastic pool {self.cluster.name}: {before} → {len(nodes)} node(s)[/]")

    def _record(self, count: int) -> None:
        self.history.append((time.time(), count))


def _autoscaler_on(provider: Any, cluster_name: str, config_reader: Any, gcs: Any) -> Any:
    """Ray's v2 `Autoscaler`, wrapping this very provider object (Ray would build its own from the
    config: a second instance with its own index reservations)."""
    from ray.autoscaler.v2.autoscaler import Autoscaler
    from ray.autoscaler.v2.instance_manager.node_provider import NodeProviderAdapter

    class _OnProvider(Autoscaler):
        def _init_cloud_instance_provider(self, config: Any, reader: Any) -> None:
            self._cloud_instance_provider = NodeProviderAdapter(v1_provider=provider, config_reader=reader)

    return _OnProvider(session_name=cluster_name, config_reader=config_reader, gcs_client=gcs)


class _NoLegacyFieldNotes(logging.Filter):
    """Ray's config check warns that the external provider's own defaults carry empty legacy fields."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Dropping the empty legacy field")


def _quiet_ray_autoscaler_logs() -> None:
    """Ray's autoscaler logs every round at INFO; in a user's terminal only its warnings belong."""
    for name in ("ray.autoscaler.v2", "ray.autoscaler._private"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)
    util = logging.getLogger("ray.autoscaler._private.util")
    if not any(isinstance(f, _NoLegacyFieldNotes) for f in util.filters):
        util.addFilter(_NoLegacyFieldNotes())


__all__ = ["ElasticScaler", "autoscaling_config", "node_resources"]
