"""Vast.ai first contact (issue 20): the fake holds Vast's published contract (schema, field
limits, rate limits) and the provider lives within it; a bare `ubuntu:22.04`-like machine (no curl,
no python3) gets curl before anything that needs it, so a failed boot still destroys the instance.

No Ray starts here: the fake's HTTP server, the real SDK, and (last test) one boot payload run
by bash with a PATH as bare as the image's.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest
from ray.autoscaler.tags import NODE_KIND_WORKER

import skyward_ray as sky
from node_providers.vastai.payload import ENV_TOTAL_LIMIT
from tests.simvast import USER_KEY
from tests.simvast.server import decode_onstart
from tests.test_vastai_provider import config, create, provider_for, sim, t4  # noqa: F401 (sim: the fixture)

AUTH = {"Authorization": f"Bearer {USER_KEY}"}


def rent(sim, ask, **body):
    return sim.handle("PUT", f"/api/v0/asks/{ask}/", {}, {"image": "ubuntu:22.04", **body}, AUTH)


def test_the_fake_refuses_what_vasts_create_api_refuses_with_vasts_error_shape(sim):
    refused = [rent(sim, 101, onstart="x" * 4049),                     # onstart over 4,048
               rent(sim, 101, onstart="x" * 4000, args=["y" * 97]),    # args + onstart over 4,096
               rent(sim, 101, label="l" * 257),                        # label over 256
               rent(sim, 101, globalNetwork=True),                     # a field Vast does not document
               rent(sim, 101, env={"BIG": "v" * 300}),                 # an env entry over 256
               rent(sim, 101, image="")]
    for status, body in refused:
        assert status == 400 and body["success"] is False and body["error"] == "invalid_args", body
    assert sim.live() == [], "a refused request rents nothing"
    status, body = rent(sim, 101, onstart="x" * 4048, label="l" * 256, client_id="me", extra=None)
    assert status == 200 and body["success"] and len(sim.live()) == 1


def test_rate_limits_are_off_by_default_and_answer_429_as_documented_when_on(sim):
    listing = lambda: sim.handle("GET", "/api/v1/instances/", {"limit": "25"}, None, AUTH)  # noqa: E731
    assert [listing()[0] for _ in range(3)] == [200, 200, 200]
    sim.rate_limited = True
    time.sleep(1.0)
    assert listing()[0] == 200
    status, body = listing()
    assert status == 429 and body["detail"].startswith("API requests too frequent")
    assert rent(sim, 101)[0] == 200
    assert rent(sim, 102)[0] == 429 and len(sim.live()) == 1  # 4.5 s between rentals (+12 s penalty)


def worst_case(sim, tmp_path, **extra):
    """A head as a detached pool makes it: lifetime, the cluster's sshd, and a long Image."""
    from tests.provider_helpers import cluster_params

    cfg = config(sim, tmp_path)
    image = dict(pip=[f"package-number-{i}[extra]>=1.{i}.0,<2" for i in range(40)],
                 apt=[f"lib{i}-dev" for i in range(15)],
                 env={f"SETTING_{i}": "v" * 100 for i in range(10)})
    params = cluster_params(t4(cfg), max_lifetime=86400.0, **{**image, **extra})
    from skyward_ray.cluster import provisioning

    from tests.provider_helpers import cluster_name
    name = cluster_name()
    return provisioning.load_node_provider(cfg, params, name), name


def test_a_worst_case_head_fits_vasts_limits_and_is_rented_under_its_rate_limits(sim, tmp_path):
    sim.rate_limited = True
    provider, name = worst_case(sim, tmp_path)
    head = create(provider, name, index=0)
    [payload] = sim.payloads()
    assert len(payload["onstart"]) <= 4048 and len(payload["label"]) <= 256
    assert all(len(f"{k}={v}") <= 256 for k, v in payload["env"].items())
    text = decode_onstart(payload)
    assert "package-number-39" in text and "lib14-dev" in text and "Port 2222" in text
    for _ in range(3):  # the launcher polls; each listing waits for its turn
        assert provider.non_terminated_nodes({}) == [head]
        provider.machines(fresh=True)
    provider.terminate_nodes([head])
    assert sim.live() == [] and sim.limiter.refused == 0, "every call came in its turn"


def test_an_image_too_long_for_vast_is_a_spec_error_naming_the_cause_before_anything_is_rented(sim, tmp_path):
    provider, name = worst_case(sim, tmp_path, pip=[secrets.token_hex(16) for _ in range(2000)])
    with pytest.raises(sky.SpecError, match=f"over the {ENV_TOTAL_LIMIT:,} characters.*pip, apt and env"):
        create(provider, name, index=0)
    assert sim.payloads() == []


def test_429s_beyond_the_sdks_two_retries_are_backed_off(sim, tmp_path):
    cfg = config(sim, tmp_path)
    provider, name = provider_for(sim, tmp_path, t4(cfg))
    sim.throttle_next("create", 1)  # a rental is sent once by the SDK: the 429 is ours to wait out (4.5 + 12 s)
    head = create(provider, name, index=0)
    sim.throttle_next("list", 4)    # the SDK's three attempts, then one more after our backoff
    assert [m.instance_id for m in provider.machines(fresh=True)] == [head]
    sim.throttle_next("destroy", 3)
    provider.terminate_nodes([head])
    assert sim.live() == []


def bare_path(tmp_path: Path, real_curl: str) -> Path:
    """A PATH like ubuntu:22.04's: the system's tools without curl, python3, pip, uv or sshd, and an
    apt-get that "installs" curl (the real one) and records what it was asked."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    hidden = ("python", "curl", "pip", "uv", "sshd", "wget", "apt", "dpkg")
    for directory in ("/usr/bin", "/bin"):
        for entry in os.scandir(directory):
            if not entry.name.startswith(hidden) and not (bin_dir / entry.name).exists():
                (bin_dir / entry.name).symlink_to(entry.path)
    apt = bin_dir / "apt-get"
    apt.write_text(f'#!/bin/bash\necho "apt-get $*" >> {tmp_path}/apt.calls\n'
                   f'case " $* " in *" install "*curl*) ln -sf {real_curl} {bin_dir}/curl ;; esac\nexit 0\n')
    apt.chmod(0o755)
    return bin_dir


def test_a_bare_image_gets_curl_first_so_a_failed_boot_destroys_the_instance(sim, tmp_path):
    real_curl = subprocess.run(["bash", "-c", "command -v curl"], capture_output=True, text=True).stdout.strip()
    assert real_curl
    cfg = config(sim, tmp_path)
    provider, name = provider_for(sim, tmp_path, t4(cfg))
    create(provider, name, index=0)
    worker = create(provider, name, NODE_KIND_WORKER)
    payload = next(p for p in sim.payloads() if "/worker/" in p["label"])
    instance = next(i for i in sim.live() if str(i.id) == worker)
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in payload["env"].items() if not k.startswith("-")},
           "PATH": str(bare_path(tmp_path, real_curl)), "HOME": str(home), "CONTAINER_ID": worker,
           "CONTAINER_API_KEY": instance.api_key, "SKYWARD_MACHINE_DIR": str(tmp_path / "marks"),
           "SKYWARD_ENV_DIR": str(tmp_path / "env" / "venv"), "TMPDIR": str(tmp_path)}
    boot = subprocess.Popen(["bash", "-c", payload["onstart"]], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while worker in {str(i.id) for i in sim.live()} and time.monotonic() < deadline and boot.poll() is None:
            time.sleep(0.5)
    finally:
        try:
            os.killpg(boot.pid, signal.SIGKILL)  # the boot deadline's sleeper, and anything else it left
        except ProcessLookupError:
            pass
    output = boot.communicate(timeout=30)[0]
    assert "install" in (tmp_path / "apt.calls").read_text() and "curl" in (tmp_path / "apt.calls").read_text()
    assert worker not in {str(i.id) for i in sim.live()}, output[-3000:]
    deletes = [c for c in sim.calls if c.method == "DELETE"]
    assert deletes and {(c.key_kind, c.status) for c in deletes[:1]} == {(f"instance:{worker}", 200)}, output[-3000:]
