"""Docker containers in the conformance suite: the real Docker SDK against a real Docker Engine
(the tests' own `dockerd`, tests/images/engine.py), every node a container of the default image
(`python:<X.Y.Z>-slim`, here the stand-in built from Debian packages, tests/images/python_slim.py).

The "cloud's side" is the engine: what bills is a labelled container (a node or the pool's
gateway) or a pool's network; the cloud taking a machine away is `docker kill`.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

import skyward_ray as sky
from skyward_ray.cluster.contract import ClusterParams
from tests.conformance import Harness
from tests.images import engine, python_slim, rootfs
from tests.timeouts import SIM_BOOT_TIMEOUT

# Every node shares this small machine: small nodes.
SETTINGS: dict[str, Any] = {"object_store_memory": 80 * 1024**2, "memory": 1536 * 1024**2, "cpus": 1.0}


def unavailable() -> str | None:
    return engine.unavailable() or rootfs.unavailable()


@contextlib.contextmanager
def container_engine() -> Iterator[Any]:
    """A Docker client of the tests' engine with the default image present (skips without Docker)."""
    import docker

    reason = unavailable()
    if reason is not None:
        pytest.skip(f"sky.Container needs a Docker Engine: {reason}")
    with engine.docker_engine() as address:
        client = docker.DockerClient(base_url=address, timeout=120)
        python_slim.ensure(client)
        try:
            yield client
        finally:
            client.close()


def engine_objects(client: Any) -> dict[str, list[str]]:
    """Every container (by short id) and every network but Docker's own on the engine, skyward's or
    not. The tests that use the engine run one at a time (their xdist group is "docker"), so what
    is here is theirs."""
    containers = client.api.containers(all=True)  # one call: `containers.list` inspects each, racing removals
    networks = [n.name for n in client.networks.list() if n.name not in ("bridge", "host", "none")]
    return {"containers": sorted(c["Id"][:12] for c in containers), "networks": sorted(networks)}


@contextlib.contextmanager
def harness() -> Iterator[Harness]:
    with container_engine() as client, tempfile.TemporaryDirectory(prefix="keys-") as keys:
        config = sky.Container(key_dir=keys, **SETTINGS)
        foreign: list[Any] = []

        def params(nodes: int = 1, **kw: Any) -> ClusterParams:
            return ClusterParams(auth_token="t" * 64, nodes=nodes, offer="container", **kw)

        def boot_payloads() -> list[str]:
            boxes = client.containers.list(all=True, filters={"label": "skyward.kind=node"}, ignore_removed=True)
            return ["\n".join([*(box.attrs["Config"].get("Entrypoint") or []), *(box.attrs["Config"].get("Env") or [])])
                    for box in boxes]

        def interrupt(instance_id: str) -> None:
            with contextlib.suppress(Exception):
                client.containers.get(instance_id).kill()

        def explain(instance_id: str) -> str:
            try:
                box = client.containers.get(instance_id)
                state = box.attrs["State"]
                log = box.logs(tail=25).decode(errors="replace")
            except Exception as error:
                return f"{instance_id}: {error}"
            return (f"{box.name}: {state['Status']} (started {state.get('StartedAt')}, pid {state.get('Pid')})\n"
                    + (log or "(no log)"))

        def foreign_machine() -> str:
            box = client.containers.run(python_slim.tag(), ["sleep", "600"], detach=True, network_mode="none",
                                        labels={"another-tool": "notebook"})
            foreign.append(box)
            return box.id[:12]

        try:
            yield Harness(
                name="container",
                config=config,
                params=params,
                accelerator=None,
                billable=lambda: engine_objects(client),
                boot_payloads=boot_payloads,
                secrets=[],
                interrupt=interrupt,
                fail_capacity=None,  # one engine, one offer: nothing to fall back to
                foreign_machine=foreign_machine,
                compute_settings={"boot_timeout": SIM_BOOT_TIMEOUT},
                explain=explain,
            )
        finally:
            for box in foreign:
                with contextlib.suppress(Exception):
                    box.remove(force=True)
