"""An in-memory cloud for fast tests of the launcher and the generic node provider (no Ray processes).

It implements the provider contract (`skyward_ray.cluster.contract.Cloud`) the way a real cloud
behaves from the outside: machines are listed by the cluster's tag, keep their tags and
addresses, and stay listed as terminated; state lives "in the cloud" (a module-level table), so
a provider re-created from the same config finds the same machines. Nothing boots: a machine's
boot script is kept so tests can read what a node would run.

Knobs: `FakeCloud.fail_launch[index] = error` makes the launch of that node index raise;
`launch_delay` makes every launch take that long; `lose_response[index] = error` starts the machine
and then raises (a response lost on the way back), and such a machine stays out of the listing
for `listing_lag` seconds (a cloud's eventual consistency; `LaggyFake` declares its listing so).
Every call is recorded in `FakeCloud.calls` so tests can check order (teardown: workers first).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from node_providers.local.cloud import LocalCloud
from node_providers.local.config import Local
from skyward_ray.cluster.contract import BootEnvironment, Cloud, Machine, MachineRequest, Role
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider
from skyward_ray.planning.providers import ProviderConfig


class Fake(ProviderConfig):
    """A provider config for the in-memory cloud (made up for tests)."""

    name: ClassVar[str] = "fake"
    node_provider: ClassVar[str | None] = "tests.fakecloud:FakeNodeProvider"


class FakeCloud(Cloud):
    config_class = Fake
    listing_is_consistent = True  # an in-memory table: a machine is listed once launched

    machines: ClassVar[dict[str, dict[str, Machine]]] = {}  # cluster → id → machine ("the cloud")
    scripts: ClassVar[dict[str, str]] = {}
    prepared_clusters: ClassVar[list[str]] = []
    cleaned_clusters: ClassVar[list[str]] = []
    calls: ClassVar[list[tuple[str, tuple[str, ...]]]] = []
    fail_launch: ClassVar[dict[int, BaseException]] = {}
    lose_response: ClassVar[dict[int, BaseException]] = {}
    launch_delay: ClassVar[float] = 0.0
    listing_lag: ClassVar[float] = 0.0
    _hidden_until: ClassVar[dict[str, float]] = {}
    _ids = itertools.count(1)
    _lock = threading.Lock()

    @classmethod
    def reset(cls) -> None:
        for table in (cls.machines, cls.scripts, cls.fail_launch, cls.lose_response, cls._hidden_until):
            table.clear()
        FakeCloud.launch_delay = FakeCloud.listing_lag = 0.0
        for log in (cls.prepared_clusters, cls.cleaned_clusters, cls.calls):
            log.clear()

    def prepare(self) -> dict[str, Any]:
        with self._lock:
            self.prepared_clusters.append(self.cluster_name)
            self.machines.setdefault(self.cluster_name, {})
        return {"network": f"net-{self.cluster_name}"}

    def cleanup(self) -> None:
        with self._lock:
            self.cleaned_clusters.append(self.cluster_name)

    def boot_environment(self, role: Role, index: int) -> BootEnvironment:
        return BootEnvironment(instance_id_shell="${SKYWARD_INSTANCE_ID}", node_ip_shell="${SKYWARD_NODE_IP}",
                               shutdown_command="poweroff", num_cpus=1)

    def launch(self, request: MachineRequest) -> Machine:
        if self.launch_delay:
            time.sleep(self.launch_delay)
        error = self.fail_launch.get(request.index)
        if error is not None:
            raise error
        with self._lock:
            n = next(self._ids)
            machine = Machine(instance_id=f"fake-{n}", state="running", private_ip=f"10.0.0.{n}",
                              public_ip=f"203.0.113.{n}", tags=dict(request.tags))
            self.machines.setdefault(self.cluster_name, {})[machine.instance_id] = machine
            self.scripts[machine.instance_id] = request.boot_script
            self.calls.append(("launch", (machine.instance_id,)))
            lost = self.lose_response.get(request.index)
            if lost is not None:
                self._hidden_until[machine.instance_id] = time.monotonic() + self.listing_lag
        if lost is not None:
            raise lost
        return machine

    def describe(self) -> list[Machine]:
        with self._lock:
            now = time.monotonic()
            return [m for m in self.machines.get(self.cluster_name, {}).values()
                    if self._hidden_until.get(m.instance_id, 0.0) <= now]

    def terminate(self, instance_ids: list[str]) -> None:
        with self._lock:
            self.calls.append(("terminate", tuple(instance_ids)))
            table = self.machines.get(self.cluster_name, {})
            for instance_id in instance_ids:
                if instance_id in table:
                    old = table[instance_id]
                    table[instance_id] = Machine(old.instance_id, "terminated", old.private_ip, None, old.tags)

    def set_tags(self, instance_id: str, tags: Mapping[str, str]) -> None:
        with self._lock:
            old = self.machines[self.cluster_name][instance_id]
            self.machines[self.cluster_name][instance_id] = Machine(
                old.instance_id, old.state, old.private_ip, old.public_ip, {**old.tags, **tags})


class FakeNodeProvider(ScriptBootedNodeProvider):
    cloud_class = FakeCloud


class LaggyFake(Fake):
    """The in-memory cloud, declared eventually consistent (as a real cloud API is)."""

    node_provider: ClassVar[str | None] = "tests.fakecloud:LaggyFakeNodeProvider"


class LaggyFakeCloud(FakeCloud):
    config_class = LaggyFake
    listing_is_consistent = False


class LaggyFakeNodeProvider(ScriptBootedNodeProvider):
    cloud_class = LaggyFakeCloud


# -- a local machine that cannot boot (fault injection for teardown tests) -----------------------


class UnbootableLocal(Local):
    """sky.Local whose machines ask Ray for an object store below Ray's minimum: `ray start` exits at once."""

    node_provider: ClassVar[str | None] = "tests.fakecloud:UnbootableLocalNodeProvider"


class UnbootableLocalCloud(LocalCloud):
    config_class = UnbootableLocal

    def boot_environment(self, role: Role, index: int) -> BootEnvironment:
        return super().boot_environment(role, index).model_copy(update={"object_store_memory": 1024})


class UnbootableLocalNodeProvider(ScriptBootedNodeProvider):
    cloud_class = UnbootableLocalCloud
