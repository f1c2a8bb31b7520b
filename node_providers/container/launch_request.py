"""Create and start a container as one request that outlives the driver, as a cloud's launch does.

Docker creates a container and starts it in two API calls. A driver killed between them (SIGKILL,
the OOM killer) would leave a container that was created and never started, and such a container
never ends: `auto_remove` acts only when a started container exits, and no boot script runs in it
to end it. A cloud carries out a launch request it has accepted whatever its caller does next; this
module gives a container's launch the same property. Both calls (and any extra network) run in a
short-lived process in a session of its own, which finishes them even when the driver is gone; the
driver waits for it and reads the container's attributes back.

Run as `python -m node_providers.container.launch_request` with a `Launch` as JSON on stdin; it
imports only the Docker SDK (a launch costs the driver ~0.2 s of CPU for it, not skyward_ray's imports).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

_TIMEOUT_S = 120  # as the engine client's own: a busy engine can take this long to start a container


@dataclasses.dataclass
class Launch:
    """One container to create and start, in plain data (it crosses a process boundary as JSON)."""

    image: str
    command: list[str] | None = None
    entrypoint: list[str] | None = None
    name: str = ""
    labels: dict[str, str] = dataclasses.field(default_factory=dict)
    network: str = ""
    aliases: list[str] = dataclasses.field(default_factory=list)
    also_networks: list[str] = dataclasses.field(default_factory=list)  # connected before the start
    publish_on_loopback: list[str] = dataclasses.field(default_factory=list)  # "2222/tcp": a free 127.0.0.1 port
    nano_cpus: int | None = None
    mem_limit: int | None = None
    shm_size: int | None = None
    gpus: int | None = None  # NVIDIA device request: -1 for all of them; None for none


def launch(docker_host: str, request: Launch) -> dict[str, Any]:
    """The started container's attributes (`docker inspect`). Docker's own errors are raised as the
    `docker.errors` class the engine raised, for `engine.engine_errors` to type."""
    import docker

    root = str(Path(__file__).resolve().parents[2])  # where node_providers is importable from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.Popen([sys.executable, "-m", __name__, docker_host], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = child.communicate(json.dumps(dataclasses.asdict(request)).encode(), timeout=_TIMEOUT_S + 30)
    except BaseException:
        # An interrupt here (Ctrl-C, a signal's teardown) leaves the request to finish, as a cloud's
        # would; waiting for it lets the teardown that follows find the container it made.
        with contextlib.suppress(Exception):
            child.wait(timeout=_TIMEOUT_S + 30)
        raise
    answer = _last_json_line(out)
    if child.returncode == 0 and "attrs" in answer:
        return answer["attrs"]
    if "error" in answer:
        raise getattr(docker.errors, answer["error"], docker.errors.DockerException)(answer["message"])
    raise docker.errors.DockerException(
        f"the launch process ended with {child.returncode}: {(err or out).decode(errors='replace')[-500:]}")


def _last_json_line(out: bytes) -> dict[str, Any]:
    for line in reversed(out.decode(errors="replace").splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    return {}


def _create_and_start(docker_host: str, request: Launch) -> dict[str, Any]:
    import docker

    client = docker.DockerClient(base_url=docker_host, timeout=_TIMEOUT_S)
    devices = [docker.types.DeviceRequest(count=request.gpus, capabilities=[["gpu"]])] if request.gpus else None
    box = client.containers.create(
        request.image, request.command, entrypoint=request.entrypoint, name=request.name or None, init=True,
        auto_remove=True, labels=request.labels, network=request.network,
        networking_config={request.network: client.api.create_endpoint_config(aliases=request.aliases or None)},
        ports={port: ("127.0.0.1", None) for port in request.publish_on_loopback} or None,
        nano_cpus=request.nano_cpus, mem_limit=request.mem_limit, shm_size=request.shm_size, device_requests=devices)
    for network in request.also_networks:
        client.networks.get(network).connect(box)
    box.start()
    box.reload()
    return box.attrs


def main() -> int:
    import docker

    request = Launch(**json.loads(sys.stdin.read()))
    try:
        answer: dict[str, Any] = {"attrs": _create_and_start(sys.argv[1], request)}
    except docker.errors.DockerException as error:
        answer = {"error": type(error).__name__, "message": str(getattr(error, "explanation", None) or error)}
    try:  # the driver may be gone: nobody reads this then, and the container runs and ends itself
        print(json.dumps(answer), flush=True)
    except OSError:
        pass
    return 0 if "attrs" in answer else 1


if __name__ == "__main__":
    sys.exit(main())
