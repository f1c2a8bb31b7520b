"""A Docker Engine for the tests: the one DOCKER_HOST (or the default socket) names when it answers,
else a `dockerd` of the tests' own, started here and ended by process id.

The tests' own daemon runs with its firewall management off (`--iptables=false`, no default
bridge): Docker's default setup turns the FORWARD policy to DROP and enables bridge netfilter,
which drops the traffic of the simulated clouds' network-namespace bridges running beside it.
With it off, user-defined networks still work and `127.0.0.1` port publishing is served by
`docker-proxy`; containers get no outbound NAT, as a pool's private network should not.

Its data root survives between runs (images built once per machine stay cached); everything it
runs is the tests' and is ended with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

DATA_ROOT = Path(os.environ.get("SKYWARD_TEST_DOCKER_ROOT", "/var/lib/skyward-test-docker"))
EXEC_ROOT = Path("/run/skyward-test-docker")
SOCKET = EXEC_ROOT / "docker.sock"


def _answers(address: str) -> bool:
    import docker

    try:
        client = docker.DockerClient(base_url=address, timeout=5)
        client.ping()
        client.close()
        return True
    except Exception:
        return False


def unavailable() -> str | None:
    """Why no engine can be had here, or None."""
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the Docker SDK is not installed (pip install 'skyward-ray[container]')"
    if _answers(os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"):
        return None
    if shutil.which("dockerd") is None:
        return "no Docker Engine answers and dockerd is not installed (bash tests/system-packages.sh installs it)"
    if os.geteuid() != 0:
        return "no Docker Engine answers and starting dockerd needs root"
    return None


@contextlib.contextmanager
def docker_engine() -> Iterator[str]:
    """The address of an engine for the block (also put in DOCKER_HOST, which the product reads).

    The tests' own daemon is shared by every test process of the run (xdist workers): the first
    user starts it, the last one ends it, counted in a file under a lock."""
    for address in filter(None, (os.environ.get("DOCKER_HOST"), "unix:///var/run/docker.sock")):
        if address != f"unix://{SOCKET}" and _answers(address):
            with _docker_host(address):
                yield address
            return
    address = f"unix://{SOCKET}"
    with _users_lock():
        users = _users() if _answers(address) else 0
        if users == 0 and not _answers(address):
            _start_dockerd()
            _remove_leftovers(address)
        _set_users(users + 1)
    try:
        with _docker_host(address):
            yield address
    finally:
        with _users_lock():
            users = max(0, _users() - 1)
            _set_users(users)
            if users == 0:
                _stop_dockerd()


def _remove_leftovers(address: str) -> None:
    """Containers and networks a crashed earlier run left in the tests' own daemon (its data root
    survives between runs): they are the tests', and a run starts with an empty engine."""
    import docker

    client = docker.DockerClient(base_url=address, timeout=60)
    for box in client.containers.list(all=True, ignore_removed=True):
        with contextlib.suppress(docker.errors.APIError):
            box.remove(force=True)
    client.networks.prune()
    client.close()


@contextlib.contextmanager
def _users_lock() -> Iterator[None]:
    import fcntl

    EXEC_ROOT.mkdir(parents=True, exist_ok=True)
    with open(EXEC_ROOT / "users.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _users() -> int:
    try:
        return int((EXEC_ROOT / "users").read_text() or 0)
    except (OSError, ValueError):
        return 0


def _set_users(count: int) -> None:
    (EXEC_ROOT / "users").write_text(str(count))


@contextlib.contextmanager
def _docker_host(address: str) -> Iterator[None]:
    before = os.environ.get("DOCKER_HOST")
    os.environ["DOCKER_HOST"] = address
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = before


def _start_dockerd() -> None:
    DATA_ROOT.mkdir(parents=True, exist_ok=True)
    EXEC_ROOT.mkdir(parents=True, exist_ok=True)
    log = open(EXEC_ROOT / "dockerd.log", "ab")
    process = subprocess.Popen(
        ["dockerd", "--data-root", str(DATA_ROOT), "--exec-root", str(EXEC_ROOT / "exec"), "-H", f"unix://{SOCKET}",
         "--pidfile", str(EXEC_ROOT / "dockerd.pid"), "--iptables=false", "--ip6tables=false", "--bridge=none",
         "--ip-masq=false", "--userland-proxy=true"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    (EXEC_ROOT / "dockerd.started-pid").write_text(str(process.pid))
    deadline = time.monotonic() + 60
    while not _answers(f"unix://{SOCKET}"):
        if process.poll() is not None or time.monotonic() > deadline:
            _stop_dockerd()
            tail = (EXEC_ROOT / "dockerd.log").read_text(errors="replace")[-1500:]
            raise RuntimeError(f"dockerd did not start: {tail}")
        time.sleep(0.3)


def _stop_dockerd() -> None:
    """End the tests' dockerd and what it started (its containerd and shims), by process id."""
    try:
        daemon = psutil.Process(int((EXEC_ROOT / "dockerd.started-pid").read_text()))
        if "dockerd" not in daemon.name():
            return
        family = [daemon, *daemon.children(recursive=True)]
    except (OSError, ValueError, psutil.NoSuchProcess):
        return
    with contextlib.suppress(psutil.NoSuchProcess):
        daemon.send_signal(signal.SIGTERM)
    gone, alive = psutil.wait_procs([daemon], timeout=30)
    gone, alive = psutil.wait_procs(family, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=10)
