"""Keep a pool at its size: a worker whose machine disappears (spot interruption, host failure) is
replaced by a new machine with the same node index.

Ray already retries the lost node's tasks on the nodes that remain; this only brings the
capacity back. It runs in the driver, which holds the cloud credentials, so no node ever needs
them. The head is not replaced: without it there is no cluster, and the pool ends.
"""

from __future__ import annotations

import threading
import time

import ray

from skyward_ray import names
from skyward_ray.cluster import launcher
from skyward_ray.console import console
from skyward_ray.planning.nodes import NodeInfo


class NodeReplacer:
    """A daemon thread that checks the provider every `interval` seconds and replaces lost workers."""

    def __init__(self, cluster: launcher.Cluster, interval: float = 5.0, join_timeout: float = 600.0) -> None:
        self.cluster = cluster
        self.interval = interval
        self.join_timeout = join_timeout
        self.replaced: list[tuple[str, str]] = []  # (lost instance id, replacement instance id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="skyward-replacer", daemon=True)

    def start(self) -> "NodeReplacer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                live = set(self.cluster.provider.non_terminated_nodes({}))  # one provider call per round
                head = self.cluster.nodes[0]
                if head.instance_id not in live:
                    console.print(f"[red]the head node ({head.instance_id}) is gone; the pool cannot recover "
                                  "and no more nodes will be started[/]")
                    return
                for node in list(self.cluster.nodes):
                    if node.index == 0 or node.instance_id in live or self._stop.is_set():
                        continue
                    console.print(f"[yellow]node {node.index} ({node.instance_id}) is gone; replacing it[/]")
                    new_id = launcher.create_worker(self.cluster, node.index)
                    replacement = self._wait_for_join(new_id, node)
                    if replacement is not None:
                        self.cluster.nodes = sorted(
                            [n for n in self.cluster.nodes if n.index != node.index] + [replacement],
                            key=lambda n: n.index,
                        )
                        self.replaced.append((node.instance_id, new_id))
                        console.print(f"[green]node {node.index} replaced by {new_id}[/]")
            except Exception as error:  # a failed replacement is retried on the next round
                if not self._stop.is_set():
                    console.print(f"[red]could not replace a lost node ({type(error).__name__}: {error}); "
                                  "will retry[/]")

    def _wait_for_join(self, instance_id: str, lost: NodeInfo) -> NodeInfo | None:
        deadline = time.monotonic() + self.join_timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            for info in ray.nodes():
                labels = info.get("Labels", {})
                if info.get("Alive") and labels.get(names.INSTANCE_ID) == instance_id:
                    return lost.model_copy(update={
                        "instance_id": instance_id, "ray_node_id": info["NodeID"], "ip": info["NodeManagerAddress"],
                    })
            if instance_id not in self.cluster.provider.non_terminated_nodes({}):
                raise RuntimeError(f"the replacement {instance_id} stopped before joining")
            time.sleep(0.5)
        return None
