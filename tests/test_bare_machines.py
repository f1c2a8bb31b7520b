"""Simulated machines as bare as the clouds' own (issue 20, items 1 and 3): a machine boots in its
cloud's image (`tests.images.cloud_images`) with a root filesystem, PID and mount namespaces of its
own (`tests.simnet.rootfs_machine`), and what it installs comes from the simulated internet
(`tests.siminternet`), through the product's own boot functions, never from the driver's disk.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from node_providers.local.process_host import ProcessHost
from skyward_ray.node import apt, uv_bootstrap
from tests.images.cloud_images import VAST, unpacked
from tests.images.rootfs import unavailable as rootfs_unavailable
from tests.simhost import NODE_PACKAGES
from tests.siminternet import cpython
from tests.siminternet.host import SimInternet
from tests.simnet import SimNetwork, check_available
from tests.simnet.rootfs_machine import RootfsMachine


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    reason = check_available() or rootfs_unavailable()
    if reason:
        pytest.skip(f"bare machines need namespaces and mmdebstrap: {reason}")
    root = tmp_path_factory.mktemp("bare")
    with SimNetwork() as network:
        internet = SimInternet(network, NODE_PACKAGES).start()
        assert internet.tls is not None
        yield network, internet, unpacked(VAST, internet.tls.ca_cert), ProcessHost(root / "machines"), root


def boot(world, name: str, script: str, timeout: float = 120) -> tuple[str, bool]:
    """Run `script` as a Vast-like machine's first process; (its output, whether it ended in time)."""
    network, internet, image, host, _ = world
    sim_host = network.add_host(name)
    machine = RootfsMachine(image, host.state_dir / name / "fs", f"C.{name}", internet.hosts_lines(),
                            {**VAST.environment(), "HOME": "/root", "CONTAINER_ID": name})
    host.boot(name, script, sim_host.private_ip, wrapper=machine.wrapper(sim_host.namespace), inherit_path=False)
    deadline = time.monotonic() + timeout
    while host.is_running(name) and time.monotonic() < deadline:
        time.sleep(0.2)
    ended = not host.is_running(name)
    output = host.log_tail(name, 400)
    host.terminate([name])
    return output, ended


def test_a_vast_like_machine_sees_its_image_not_the_drivers_files(world, tmp_path):
    secret = tmp_path / "driver-only.txt"
    secret.write_text("the driver's")
    script = "\n".join([
        f"cat {secret} 2>/dev/null && echo LEAK-file",
        f"[ -e {sys.executable} ] && echo LEAK-venv",
        f"[ -e {Path(sys.base_prefix) / 'bin'} ] && echo LEAK-interpreter",
        "command -v python3 python uv curl || echo 'no python3, uv or curl'",
        "[ -e /etc/ssl/certs/ca-certificates.crt ] && echo LEAK-ca-bundle",
        'echo "hostname=$(hostname) pid=$$"',
        "grep -c . /proc/1/cmdline >/dev/null && ls /proc | grep -cE '^[0-9]+$' | sed 's/^/processes=/'",
        "(exec 3<>/dev/tcp/pypi.org/443) && echo reaches-pypi",
    ])
    output, ended = boot(world, "v1", script, timeout=30)
    assert ended, output
    assert "LEAK" not in output, output
    assert "no python3, uv or curl" in output and "/usr/bin/python3" not in output, output
    assert "hostname=C.v1 pid=1" in output, output  # its own UTS and PID namespaces
    assert "processes=" in output and int(output.split("processes=")[1].split()[0]) <= 6, output
    assert "reaches-pypi" in output, output


def test_the_products_boot_functions_install_uv_and_cpython_from_the_simulated_internet(world):
    """apt (curl, ca-certificates, unzip) from the Debian host, the pinned uv wheel (sha256-checked)
    from files.pythonhosted.org, and the driver's X.Y.Z from the python-build-standalone stand-in."""
    _, internet, _, _, _ = world
    version = cpython.version()
    before = len(internet.requests())
    script = "\n".join([
        "set -eu",
        *apt.function_lines(), *uv_bootstrap.function_lines(),
        f'export PATH="{uv_bootstrap.BIN_DIR}:$PATH"',
        f"{uv_bootstrap.FUNCTION}",
        f"uv venv -q --python {version} /opt/e",
        "/opt/e/bin/python -c 'import ssl, sqlite3, ctypes, sys; print(\"python\", sys.version.split()[0])'",
        "echo BOOTED",
    ])
    output, ended = boot(world, "v2", script, timeout=240)
    assert ended and "BOOTED" in output, output
    assert f"python {version}" in output, output
    served = " ".join(internet.requests()[before:])
    for host, path in (("deb.debian.org", "/debian/pool/main/curl_"), ("files.pythonhosted.org", "uv-0.13.9-"),
                       ("github.com", "install_only.tar.gz")):
        assert host in served and path in served, f"{host}{path} was not fetched: {served[-2000:]}"


def test_ending_a_machine_ends_every_process_of_its_pid_namespace(world):
    network, _, _, host, _ = world
    output, ended = boot(world, "v3", "setsid sleep 600 </dev/null >/dev/null 2>&1 &\necho started\nsleep 600\n",
                         timeout=2)
    assert not ended and "started" in output, output
    deadline = time.monotonic() + 10
    while network.hosts["v3"].pids() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert network.hosts["v3"].pids() == [], "a daemon that left the machine's process group outlived it"
