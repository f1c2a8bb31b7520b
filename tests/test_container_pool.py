"""`sky.Container()`: real pools of real Docker containers, driven exactly like a cloud.

Every node is a container of the default image (`python:<X.Y.Z>-slim`; here the stand-in built from
Debian packages, since no registry is reachable) plus the node image built once per content hash;
the pool has its own internal network, and the driver reaches it only through the head's SSH port
published on 127.0.0.1 (the gateway), with the head's host key pinned. The conformance suite and
the leak matrix run the same provider too (tests/conformance/harness_container.py).
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import tarfile
import time

import pytest

import skyward_ray as sky
from skyward_ray import names
from tests.conformance.harness_container import SETTINGS, container_engine
from tests.conftest import REPO
from tests.images import python_slim
from tests.container_usercode import Refused, read, refuse, square, table, where
from tests.test_detached import cli, pool_env, run_ray_script


@pytest.fixture(scope="module")
def engine():
    with container_engine() as client:
        yield client


# -- refusals, before any container starts (first: the module's pool below makes this process a driver) --
def _nothing_new(engine, before: set[str]) -> None:
    now = {c.name for c in engine.containers.list(ignore_removed=True, all=True, filters={"label": names.CLUSTER})}
    now |= {n.name for n in engine.networks.list(filters={"label": names.CLUSTER})}
    assert now - before == set(), f"a refused pool left {now - before}"


def _labelled(engine) -> set[str]:
    return {c.name for c in engine.containers.list(ignore_removed=True, all=True, filters={"label": names.CLUSTER})} | \
        {n.name for n in engine.networks.list(filters={"label": names.CLUSTER})}


def test_the_main_demo_runs_unchanged_apart_from_the_provider_line(engine):
    """examples/hello.py (every operator, a plain @ray.remote, pool.map, a future) as a user would
    switch it to containers: only `provider=` added, in a driver process of its own."""
    source = (REPO / "examples" / "hello.py").read_text()
    provider = f"provider=sky.Container(**{SETTINGS!r}), "
    assert source.count("sky.Compute(nodes=3)") == 1 and source.count("sky.plan(nodes=3)") == 1
    changed = source.replace("sky.Compute(nodes=3)", f"sky.Compute({provider}nodes=3)") \
                    .replace("sky.plan(nodes=3)", f"sky.plan({provider}nodes=3)")
    done = subprocess.run([sys.executable, "-c", changed], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "square(7) >> pool        = 49" in done.stdout and "sum of 100 squares       = 328350" in done.stdout
    assert "plain @ray.remote ran on" in done.stdout and "pool gone" in done.stdout
    assert engine.containers.list(ignore_removed=True, all=True, filters={"label": names.CLUSTER}) == []


def test_no_docker_daemon_is_refused_naming_the_fix(tmp_path):
    config = sky.Container(docker_host=f"unix://{tmp_path}/docker.sock", key_dir=str(tmp_path))
    with pytest.raises(sky.ProviderUnavailableError, match="(start Docker|install Docker)"):
        with sky.Compute(provider=config, nodes=1):
            pass


def _image_from_files(engine, tag: str, files: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o755
            archive.addfile(info, io.BytesIO(data))
    repository, _, version = tag.partition(":")
    engine.api.import_image_from_data(buffer.getvalue(), repository=repository, tag=version)
    return tag


@pytest.mark.parametrize("image, message", [
    ("skyward-test/no-bash:1", "has no bash"),
    ("skyward-test/no-python:1", "has no python3"),
    ("skyward-test/never-published:1", "the pull failed"),
])
def test_an_unusable_image_is_refused_with_the_reason(engine, tmp_path, image, message):
    if image == "skyward-test/no-bash:1":
        _image_from_files(engine, image, {"etc/hostname": b"empty\n"})
    elif image == "skyward-test/no-python:1":
        minbase = next(t for i in engine.images.list("skyward-test/slim-rootfs") for t in i.tags)
        engine.images.get(minbase).tag("skyward-test/no-python", "1")  # Debian minbase: bash, no python3
    before = _labelled(engine)
    config = sky.Container(image=image, key_dir=str(tmp_path), **SETTINGS)
    with pytest.raises(sky.SpecError, match=message):
        with sky.Compute(provider=config, nodes=1):
            pass
    _nothing_new(engine, before)


# The driver dies (SIGKILL) the instant Docker's create call returns in its own process, before it
# could send the start: where the launch runs create and start in the driver, that kill lands exactly
# between the two calls. (Docker's SDK is patched here, in the test's driver, never our code.)
KILLED_MID_LAUNCH = r"""
import os, signal, sys
from docker.models.containers import ContainerCollection
from node_providers.container.launch_request import Launch, launch

real_create = ContainerCollection.create
def create_then_die(self, *args, **kwargs):
    made = real_create(self, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
ContainerCollection.create = create_then_die
launch(os.environ["DOCKER_HOST"], Launch(image=sys.argv[1], command=["sleep", "2"], name=sys.argv[2],
                                         labels={"skyward/cluster": sys.argv[2]}, network="bridge"))
print("LAUNCHED", flush=True)
"""


def test_a_driver_killed_mid_launch_leaves_no_container_that_never_started(engine):
    """Docker creates a container and starts it in two calls; a driver SIGKILLed between them once
    left a container "created" forever (auto-removal acts only on a started one). Now the launch is
    carried out whatever happens to the driver: the container starts, ends and goes by itself."""
    name = f"skyward-killed-{os.getpid()}"
    driver = subprocess.run([sys.executable, "-c", KILLED_MID_LAUNCH, python_slim.tag(), name], text=True,
                            capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 60
        states = set()
        while listed := engine.containers.list(ignore_removed=True, all=True, filters={"name": name}):
            states.add(listed[0].status)
            assert time.monotonic() < deadline, \
                f"the container is still there ({states}) after its driver died: {driver.stdout}{driver.stderr}"
            time.sleep(0.1)
        # the launch ran beside the driver (in its own process), so the driver's death never interrupted it
        assert driver.returncode == 0 and "LAUNCHED" in driver.stdout, driver.stderr
    finally:
        for box in engine.containers.list(ignore_removed=True, all=True, filters={"name": name}):
            box.remove(force=True)


# -- a three-node pool -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pool(engine, tmp_path_factory):
    config = sky.Container(key_dir=str(tmp_path_factory.mktemp("keys")), **SETTINGS)
    with sky.Compute(provider=config, nodes=3, image=sky.Image(pip=["tabulate==0.9.0"]), boot_timeout=300) as opened:
        yield opened
        name = opened.name
    left = engine.containers.list(ignore_removed=True, all=True, filters={"label": f"{names.CLUSTER}={name}"})
    networks = engine.networks.list(filters={"label": f"{names.CLUSTER}={name}"})
    assert left == [] and networks == [], f"the pool left {[c.name for c in left]} {[n.name for n in networks]}"


def test_every_operator_runs_on_three_containers(pool, engine):
    answers = where() @ pool
    assert [a["node"] for a in answers] == [0, 1, 2]
    boxes = engine.containers.list(ignore_removed=True, filters={"label": [f"{names.CLUSTER}={pool.name}", "skyward.kind=node"]})
    assert sorted(a["instance_id"] for a in answers) == sorted(b.id[:12] for b in boxes)
    assert all(a["host"] == a["instance_id"] for a in answers), "each node is its own container"
    assert not any(a["drivers_python"] for a in answers), "a node must not see the driver's interpreter"
    assert square(7) >> pool == 49
    assert sky.gather(*(square(i) for i in range(6))) >> pool == [i * i for i in range(6)]
    assert table([[1, 2]]) >> pool == "1  2"


def test_a_users_exception_arrives_as_its_own_type(pool):
    with pytest.raises(Refused) as raised:
        refuse(7) >> pool
    assert raised.value.code == 7


def test_a_node_cannot_read_the_drivers_files(pool, tmp_path):
    secret = tmp_path / "driver-only.txt"
    secret.write_text("the driver's")
    with pytest.raises(FileNotFoundError):
        read(str(secret)) >> pool


def _route(ip: str) -> str:
    return subprocess.run(["ip", "route", "get", ip], capture_output=True, text=True, check=True).stdout


def test_from_the_host_only_the_heads_ssh_port_answers(pool, engine):
    """The pool's network has no address and no route on the host (as a VPC has none on a laptop):
    a packet for a node leaves by the default route, never reaching the pool's bridge. The only
    door is the gateway, on an edge network of its own, where nothing but the relayed SSH port is
    open. (A TCP connect is no test here: this sandbox's default gateway accepts connections to any
    private address.)"""
    boxes = engine.containers.list(ignore_removed=True, filters={"label": f"{names.CLUSTER}={pool.name}"})
    gateway = next(b for b in boxes if b.labels.get("skyward.kind") == "gateway")
    published = gateway.attrs["NetworkSettings"]["Ports"]["2222/tcp"]
    assert [p["HostIp"] for p in published] == ["127.0.0.1"], "published on the loopback only"
    with socket.create_connection(("127.0.0.1", int(published[0]["HostPort"])), timeout=5) as ssh:
        assert ssh.recv(64).startswith(b"SSH-2.0-"), "the published port is the head's sshd"
    pool_network = engine.networks.get(f"skyward-{pool.name}")
    bridge = pool_network.attrs["Options"].get("com.docker.network.bridge.name") or f"br-{pool_network.id[:12]}"
    addresses = subprocess.run(["ip", "-4", "-o", "addr", "show", "dev", bridge], capture_output=True, text=True)
    assert addresses.returncode == 0 and " inet " not in addresses.stdout, "the pool's bridge has no address here"
    for box in boxes:
        ip = box.attrs["NetworkSettings"]["Networks"][pool_network.name]["IPAddress"]
        assert f"dev {bridge}" not in _route(ip) and " via " in _route(ip), f"{box.name} is routable from the host"
    edge_ip = gateway.attrs["NetworkSettings"]["Networks"][f"skyward-{pool.name}-edge"]["IPAddress"]
    for port in (22, 6379, 10001, 8265):
        with pytest.raises(ConnectionRefusedError):  # on a local link: a closed port is refused at once
            socket.create_connection((edge_ip, port), timeout=5).close()


def test_an_unmodified_ray_script_runs_on_a_pool_from_skyward_ray_up(engine):
    name = f"sky-c{int(time.time()) % 100000}"
    up = cli("up", name, "-p", "container", "-n", "2", "--idle-timeout", "10m",
             *(f"--set={key}={value}" for key, value in SETTINGS.items()))
    try:
        assert "RAY_ADDRESS" in up.output
        seen = run_ray_script(pool_env(name), "look")
        assert seen["sum"] == 285 and len(seen["nodes"]) == 2
    finally:
        cli("down", name, check=False)
    assert engine.containers.list(ignore_removed=True, all=True, filters={"label": f"{names.CLUSTER}={name}"}) == []
    assert engine.networks.list(filters={"label": f"{names.CLUSTER}={name}"}) == []
