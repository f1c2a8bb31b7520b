"""`skyward-ray check` for Container: the Docker daemon answers, this user may use its socket, and
the nodes' base image is here or can be pulled (its registry answers for it: `docker manifest`-like
distribution inspect, which downloads no layer). Starts and pulls nothing.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from node_providers.container.engine import client, engine_address
from skyward_ray.errors import ProviderUnavailableError
from skyward_ray.planning.check import Finding

if TYPE_CHECKING:
    from node_providers.container.config import Container


def probe(config: "Container") -> list[Finding]:
    """The Container findings, stopping where the engine cannot be reached."""
    address = engine_address(config.docker_host)
    socket = socket_finding(address)
    findings = [socket] if socket is not None else []
    try:
        engine = client(config.docker_host)
    except ProviderUnavailableError as error:
        text = str(error).removeprefix("provider='container': ")
        detail, _, fix = text.partition(". Fix: ")
        return [*findings, Finding.fail("daemon", detail, fix.split(". (")[0])]
    version = engine.version()
    findings.append(Finding.ok("daemon", f"Docker {version.get('Version', '?')} at {address}"))
    findings.append(image_finding(engine, config.image))
    return findings


def socket_finding(address: str) -> Finding | None:
    """Whether this user may read and write the engine's Unix socket; None for tcp:// or ssh://, and
    for a socket that does not exist (the daemon's finding then says what to do)."""
    path = address.removeprefix("unix://")
    if not address.startswith("unix://") or not os.path.exists(path):
        return None
    if not os.access(path, os.R_OK | os.W_OK):
        return Finding.fail("socket", f"this user may not use {path}", "add yourself to the 'docker' group "
                                                                      "(sudo usermod -aG docker $USER, then log in again)")
    return Finding.ok("socket", f"{path} is usable by this user")


def image_finding(engine: object, image: str) -> Finding:
    """The base image: present, or pullable (the registry describes it), else what to do."""
    import docker

    try:
        engine.images.get(image)  # type: ignore[attr-defined]
        return Finding.ok("image", f"{image} is present")
    except docker.errors.ImageNotFound:
        pass
    except docker.errors.APIError as error:
        return Finding.fail("image", f"{image}: {getattr(error, 'explanation', error)}")
    try:
        engine.api.inspect_distribution(image)  # type: ignore[attr-defined]
    except docker.errors.APIError as error:
        return Finding.fail("image", f"{image} is not here and its registry did not describe it "
                                     f"({getattr(error, 'explanation', error)})",
                            f"`docker pull {image}` (or load it), or pass sky.Container(image=...)")
    return Finding.ok("image", f"{image} can be pulled (the first pool pulls it)")
