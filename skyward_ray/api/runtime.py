"""Helpers for code running inside a task: which node am I, and which part of the data is mine."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, TypeVar

import ray
from pydantic import BaseModel, ConfigDict

from skyward_ray import names
from skyward_ray.errors import NotInTaskError

T = TypeVar("T")


class InstanceInfo(BaseModel):
    """The node a task runs on. The node's startup script put these facts in its environment."""

    model_config = ConfigDict(frozen=True)

    node: int
    total_nodes: int
    is_head: bool
    head_ip: str
    ip: str
    instance_id: str
    ray_node_id: str
    provider: str
    accelerator: str | None
    accelerator_count: int
    spot: bool
    cluster: str

    @property
    def index(self) -> int:
        return self.node

    def distributed_env(self, master_port: int = 29500, processes_per_node: int = 1,
                        local_rank: int = 0) -> dict[str, str]:
        """What `torch.distributed.init_process_group("env://")` (and torchrun-style code) reads:
        the head is the master, ranks follow node indexes. With several processes per node (one
        per GPU), process `local_rank` of node `n` has rank `n * processes_per_node + local_rank`.

            os.environ.update(sky.instance_info().distributed_env())
            torch.distributed.init_process_group("nccl")   # or "gloo" on CPUs
        """
        if processes_per_node < 1 or not 0 <= local_rank < processes_per_node:
            raise ValueError(f"local_rank={local_rank} must be in 0..processes_per_node-1 "
                             f"(processes_per_node={processes_per_node})")
        if not 0 < master_port < 65536:
            raise ValueError(f"master_port={master_port} is not a TCP port (1..65535)")
        return {
            "MASTER_ADDR": self.head_ip,
            "MASTER_PORT": str(master_port),
            "WORLD_SIZE": str(self.total_nodes * processes_per_node),
            "RANK": str(self.node * processes_per_node + local_rank),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(processes_per_node),
            "NODE_RANK": str(self.node),
        }


def _in_task() -> bool:
    if not ray.is_initialized():
        return False
    return ray.get_runtime_context().worker.mode == ray.WORKER_MODE and names.ENV_NODE_INDEX in os.environ


def instance_info() -> InstanceInfo:
    """Facts about the node this task runs on. Only inside a task sent to a pool."""
    if not _in_task():
        raise NotInTaskError(
            "sky.instance_info() works only inside a task running on a pool; call it from a @sky.function "
            "sent with >>, @ or gather, not from the driver"
        )
    env = os.environ
    node = int(env[names.ENV_NODE_INDEX])
    return InstanceInfo(
        node=node,
        total_nodes=int(env.get(names.ENV_TOTAL_NODES, "1")),
        is_head=node == 0,
        head_ip=env.get(names.ENV_HEAD_IP, ""),
        ip=env.get(names.ENV_NODE_IP, ""),
        instance_id=env.get(names.ENV_INSTANCE_ID, ""),
        ray_node_id=ray.get_runtime_context().get_node_id(),
        provider=env.get(names.ENV_PROVIDER, ""),
        accelerator=env.get(names.ENV_ACCELERATOR) or None,
        accelerator_count=int(env.get(names.ENV_ACCELERATOR_COUNT, "0") or 0),
        spot=env.get(names.ENV_SPOT) == "1",
        cluster=env.get(names.ENV_CLUSTER, ""),
    )


def shard(data: Sequence[T], node: int | None = None, total_nodes: int | None = None,
          shuffle: bool = False, seed: int = 0) -> Sequence[T]:
    """This node's contiguous part of `data` (lists, tuples, ranges, numpy arrays, anything sliceable).

    Parts differ in length by at most one, and together they cover `data` exactly once. Inside a
    task `node`/`total_nodes` default to this node's; pass them to shard outside a task.
    With `shuffle=True` the items are permuted (deterministically by `seed`) before splitting.
    """
    if node is None or total_nodes is None:
        info = instance_info()
        node = info.node if node is None else node
        total_nodes = info.total_nodes if total_nodes is None else total_nodes
    if total_nodes < 1 or not 0 <= node < total_nodes:
        raise ValueError(f"shard: node={node} must be in 0..total_nodes-1 (total_nodes={total_nodes})")
    length = len(data)
    base, extra = divmod(length, total_nodes)
    start = node * base + min(node, extra)
    stop = start + base + (1 if node < extra else 0)
    if shuffle:
        import random

        order = list(range(length))
        random.Random(seed).shuffle(order)
        picked: Any = [data[i] for i in order[start:stop]]
        return type(data)(picked) if isinstance(data, (list, tuple)) else picked
    return data[start:stop]
