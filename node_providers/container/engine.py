"""The Docker Engine, through the Docker SDK for Python: one client per address, errors that name the fix.

Every failure to reach the engine is a `ProviderUnavailableError` saying which of the three usual
causes it is (no Docker installed, the daemon not running, no permission on its socket), raised
before anything is planned to start. Errors of the engine's API later on become the typed errors
of `skyward_ray.errors` in `engine_errors`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from skyward_ray.cluster import api_log
from skyward_ray.errors import CapacityError, ProviderUnavailableError, ProvisioningError, SpecError

if TYPE_CHECKING:
    import docker

_CLIENTS: dict[str, "docker.DockerClient"] = {}
_LOCK = threading.Lock()
_TIMEOUT_S = 120  # the API's slowest calls here: committing a node image, removing a busy container


def engine_address(docker_host: str | None) -> str:
    """The engine's address: the config's, else DOCKER_HOST, else the default socket."""
    return docker_host or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def client(docker_host: str | None = None) -> "docker.DockerClient":
    """A client of the engine at `docker_host` (see `engine_address`), checked with a ping."""
    import docker

    address = engine_address(docker_host)
    with _LOCK:
        cached = _CLIENTS.get(address)
    if cached is not None:
        return cached
    try:
        made = docker.DockerClient(base_url=address, timeout=_TIMEOUT_S)
        made.ping()
    except docker.errors.DockerException as error:
        raise ProviderUnavailableError(_unreachable(address, error)) from None
    with _LOCK:
        _CLIENTS.setdefault(address, made)
        return _CLIENTS[address]


def _unreachable(address: str, error: Exception) -> str:
    text = str(error)
    socket_path = address.removeprefix("unix://") if address.startswith("unix://") else None
    if "Permission denied" in text or "PermissionError" in text:
        fix = (f"this user may not use the Docker socket {socket_path}. Fix: add yourself to the 'docker' group "
               "(sudo usermod -aG docker $USER, then log in again) or run Docker rootless")
    elif socket_path and not os.path.exists(socket_path) and shutil.which("docker") is None and \
            shutil.which("dockerd") is None:
        fix = ("Docker is not installed here. Fix: install Docker (https://docs.docker.com/engine/install/, "
               "or Docker Desktop), start it, then try again")
    else:
        fix = (f"the Docker daemon does not answer at {address}. Fix: start Docker (Docker Desktop, or "
               "`sudo systemctl start docker`), or set DOCKER_HOST / sky.Container(docker_host=...) to its address")
    return f"provider='container': {fix}. ({type(error).__name__}: {text[:200]})"


@contextlib.contextmanager
def engine_errors(what: str, where: str | None = None) -> Iterator[None]:
    """The engine's API errors as typed errors: a missing image or a bad request is the user's
    (`SpecError`), too little memory or CPU is capacity, the rest is a provisioning failure."""
    import docker

    what = f"{what} ({where})" if where else what

    try:
        with api_log.timed_call("container", what):
            yield
    except docker.errors.ImageNotFound as error:
        raise SpecError(f"Docker: {what}: {_explanation(error)}") from None
    except docker.errors.APIError as error:
        message = _explanation(error)
        if any(word in message.lower() for word in ("insufficient", "out of memory", "no space left", "range of cpus")):
            raise CapacityError(f"Docker: {what}: {message}") from None
        raise ProvisioningError(f"Docker: {what}: {message}") from None
    except docker.errors.DockerException as error:
        raise ProvisioningError(f"Docker: {what}: {error}") from None


def _explanation(error: Exception) -> str:
    explanation = getattr(error, "explanation", None)
    return str(explanation or error)
