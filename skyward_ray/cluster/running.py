"""A running cluster as the launcher, the replacer, the autoscaler and the teardown see it.

Its own module so that each of those can hold one without importing the others.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

from skyward_ray.cluster.driver import DriverConnection
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider
from skyward_ray.planning.nodes import NodeInfo
from skyward_ray.planning.offers import Offer


@dataclass
class Cluster:
    """A running cluster: its provider handle, its nodes and this process's connection to it."""

    name: str
    provider: ScriptBootedNodeProvider
    offer: Offer
    instance_ids: list[str]
    driver: DriverConnection | None = None
    nodes: list[NodeInfo] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    timings: dict[str, float] = field(default_factory=dict)
    last_uncertain_create: float = -1e9  # when a create last ended with no id and no refusal (e.g. a lost response)
    lost: bool = False  # the head is gone: end the machines before disconnecting (Ray's shutdown is slow then)
    creating: int = 0  # creates in flight: teardown is not done while one may still return an id
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def new_cluster_name() -> str:
    return f"sky-{secrets.token_hex(4)}"


