"""Keep a pool at its size: a worker whose machine disappears (spot interruption, host failure) is
replaced by a new machine with the same node index.

Ray already retries the lost node's tasks on the nodes that remain; this only brings the
capacity back. It runs in the driver, which holds the cloud credentials, so no node ever needs
them. The head is not replaced: without it there is no cluster, and the pool ends.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from skyward_ray.cluster.boot_wait import alive_nodes
from skyward_ray.cluster.provisioning import create_worker
from skyward_ray.cluster.running import Cluster
from skyward_ray.cluster.ssh_tunnel import HostKeyMismatchError, TunnelError
from skyward_ray.console import console
from skyward_ray.planning.nodes import NodeInfo


# A lost worker is replaced at most this many times in a row; a failed try waits BACKOFF_S × 2^(n-1)
# (at most BACKOFF_MAX_S) before the next. The head is declared lost after HEAD_MISSES listings
# without it, or HEAD_MISSES listings that show it stopped (a Vast.ai spot instance outbid, an EC2
# instance stopping: the machine is still listed, and billed, but its Ray is gone) while the head has
# not answered the driver's heartbeat for HEAD_SILENT_S (a cloud's passing status alone never ends a
# pool whose Ray answers).
MAX_ATTEMPTS = 4
BACKOFF_S = 5.0
BACKOFF_MAX_S = 120.0
HEAD_MISSES = 2
HEAD_SILENT_S = 6.0


class NodeReplacer:
    """A daemon thread that checks the provider every `interval` seconds and replaces lost workers.

    Bounded: a node index whose replacement fails is retried with exponential backoff, at most
    `max_attempts` times; a replacement that does not join within `join_timeout` is terminated.
    When the head is gone, `on_head_lost(head_id, None)` (if given) is called once and the thread
    ends. When the head's host key changed on a tunnel reconnect, `on_head_lost(head_id, error)` is
    called at once, from the tunnel's thread: the pool is cut off from its head, for safety.
    """

    def __init__(self, cluster: Cluster, interval: float = 5.0, join_timeout: float = 600.0,
                 max_attempts: int = MAX_ATTEMPTS,
                 on_head_lost: Callable[[str, BaseException | None], None] | None = None,
                 replace_workers: bool = True) -> None:
        self.cluster = cluster
        self.replace_workers = replace_workers  # False: only watch the head (an autoscaler keeps the workers)
        self.interval = interval
        self.join_timeout = join_timeout
        self.max_attempts = max_attempts
        self.on_head_lost = on_head_lost
        self.replaced: list[tuple[str, str]] = []  # (lost instance id, replacement instance id)
        self.failed_attempts: dict[int, int] = {}  # node index → failed replacements in a row
        self._next_try: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="skyward-replacer", daemon=True)

    def start(self) -> "NodeReplacer":
        self._thread.start()
        if self.cluster.driver is not None:
            self.cluster.driver.on_connection_cut(self._connection_cut)
        return self

    def _connection_cut(self, error: TunnelError) -> None:
        """The tunnel gave up. A changed host key is a security event: the pool ends now, with it as
        the cause, instead of when Ray's reconnect grace runs out (other tunnel errors: as before)."""
        if not isinstance(error, HostKeyMismatchError) or self._stop.is_set():
            return
        self._stop.set()  # nothing is replaced for a pool cut off from its head
        head = self.cluster.nodes[0].instance_id if self.cluster.nodes else "?"
        console.print(f"[red]the head's SSH host key changed ({error.endpoint}); cutting the pool off[/]")
        if self.on_head_lost is not None:
            self.on_head_lost(head, error)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        head_misses = 0
        while not self._stop.wait(self.interval):
            try:
                live = set(self.cluster.provider.non_terminated_nodes({}))  # one provider call per round
                head = self.cluster.nodes[0]
                head_misses = head_misses + 1 if self._head_down(head.instance_id, live) else 0
                if head_misses >= HEAD_MISSES:
                    console.print(f"[red]the head node ({head.instance_id}) is gone; the pool cannot recover[/]")
                    if self.on_head_lost is not None and not self._stop.is_set():
                        self.on_head_lost(head.instance_id, None)
                    return
            except Exception as error:  # the listing failed: try again next round
                if not self._stop.is_set():
                    console.print(f"[red]could not list the pool's nodes ({type(error).__name__}: {error})[/]")
                continue
            for node in list(self.cluster.nodes) if self.replace_workers else []:
                if node.index == 0 or node.instance_id in live or self._stop.is_set():
                    continue
                if self.failed_attempts.get(node.index, 0) >= self.max_attempts:
                    continue  # given up on (said so once)
                if time.monotonic() < self._next_try.get(node.index, 0.0):
                    continue
                self._replace(node)

    def _head_down(self, head_id: str, live: set[str]) -> bool:
        """Not listed, or listed as stopped (`is_terminated` reads the listing just fetched) while its
        Ray is silent too."""
        if head_id not in live:
            return True
        driver = self.cluster.driver
        return (self.cluster.provider.is_terminated(head_id) and driver is not None
                and driver.head_silent_for() > HEAD_SILENT_S)

    def _replace(self, node: NodeInfo) -> None:
        console.print(f"[yellow]node {node.index} ({node.instance_id}) is gone; replacing it[/]")
        new_id = None
        try:
            new_id = create_worker(self.cluster, node.index)
            replacement = self._wait_for_join(new_id, node)
            if replacement is None:
                if self._stop.is_set():
                    return  # the pool is closing: teardown ends the new machine with the rest
                raise RuntimeError(f"the replacement {new_id} did not join within {self.join_timeout:g}s")
        except Exception as error:
            if new_id is not None:  # never leave a replacement that did not join
                with contextlib.suppress(Exception):
                    self.cluster.provider.terminate_nodes([new_id])
            if self._stop.is_set():
                return
            failures = self.failed_attempts[node.index] = self.failed_attempts.get(node.index, 0) + 1
            if failures >= self.max_attempts:
                console.print(f"[red]could not replace node {node.index} ({type(error).__name__}: {error}); "
                              f"gave up after {failures} attempts: the pool goes on with one node fewer[/]")
                return
            wait = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (failures - 1))
            self._next_try[node.index] = time.monotonic() + wait
            console.print(f"[red]could not replace node {node.index} ({type(error).__name__}: {error}); "
                          f"trying again in {wait:g}s[/]")
            return
        self.failed_attempts.pop(node.index, None)
        self.cluster.nodes = sorted(
            [n for n in self.cluster.nodes if n.index != node.index] + [replacement], key=lambda n: n.index)
        self.replaced.append((node.instance_id, new_id))
        console.print(f"[green]node {node.index} replaced by {new_id}[/]")

    def _wait_for_join(self, instance_id: str, lost: NodeInfo) -> NodeInfo | None:
        deadline = time.monotonic() + self.join_timeout
        driver = self.cluster.driver
        assert driver is not None
        while not self._stop.is_set() and time.monotonic() < deadline:
            # the GCS's node table, not ray.nodes(): a detached pool's keeper is no Ray driver
            info = alive_nodes(driver.gcs_client(), {instance_id}).get(instance_id)
            if info is not None:
                return lost.model_copy(update={
                    "instance_id": instance_id, "ray_node_id": info.node_id.hex(), "ip": info.node_manager_address,
                })
            if self.cluster.provider.is_terminated(instance_id):
                raise RuntimeError(f"the replacement {instance_id} stopped before joining")
            time.sleep(0.5)
        return None
