"""Issue 21 on the node side: the watchdog has no kill switch and enforces a detached pool's lifetime,
self-shutdown cannot fail quietly, and config values reach the node shell only when they are plain.

Everything here is light: the watchdog runs as a real process against a stand-in `ray._raylet`
(a GCS whose heartbeat value the test writes), the boot script and the shutdown commands run in a
real bash with stub interpreters and stub `curl`/`runpodctl` (no Ray, no cloud, no network).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import skyward_ray as sky
from node_providers.runpod.cloud import shutdown_command as runpod_shutdown
from node_providers.vastai.cloud import shutdown_command as vast_shutdown
from skyward_ray.node import sshd
from skyward_ray.node.startup_script import WATCHDOG_SOURCE
from tests.test_boot_script import boot, powered_off, run_machine

# -- 1. the watchdog: no kill switch; a detached pool's lifetime, enforced on the head ------------------
# The GCS as the watchdog sees it: the heartbeat value is the file $FAKE_GCS_VALUE holds; "tick"
# means a driver that beats (a new value every read).
FAKE_RAYLET = """
import os, time

class GcsClient:
    def __init__(self, address):
        self.path = os.environ["FAKE_GCS_VALUE"]

    def internal_kv_get(self, key, namespace, timeout=None):
        value = open(self.path, "rb").read()
        return str(time.monotonic()).encode() if value == b"tick" else value
"""


def run_watchdog(tmp_path: Path, value: bytes, seconds: float, **env: str) -> tuple[bool, str]:
    """Run the real watchdog against a stand-in Ray (a `sleep`) for at most `seconds`; return
    (whether it stopped that Ray, its output)."""
    fake = tmp_path / "fake"
    (fake / "ray").mkdir(parents=True)
    (fake / "ray" / "__init__.py").write_text("")
    (fake / "ray" / "_raylet.py").write_text(FAKE_RAYLET)
    (tmp_path / "value").write_bytes(value)
    (tmp_path / "watchdog.py").write_text(WATCHDOG_SOURCE)
    ray = subprocess.Popen(["sleep", "120"])
    environment = {"PATH": os.environ["PATH"], "PYTHONPATH": str(fake), "FAKE_GCS_VALUE": str(tmp_path / "value"),
                   "SKYWARD_WATCH_GCS": "127.0.0.1:1", "SKYWARD_WATCH_RAY_PID": str(ray.pid),
                   "SKYWARD_WATCH_GRACE": "2", "SKYWARD_WATCH_FIRST_GRACE": "2", **env}
    watchdog = subprocess.Popen([sys.executable, str(tmp_path / "watchdog.py")], env=environment,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ray.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        pass
    stopped = ray.poll() is not None
    for process in (watchdog, ray):
        if process.poll() is None:
            process.kill()
        process.wait()
    return stopped, watchdog.stdout.read() if watchdog.stdout else ""


def test_a_heartbeat_of_detached_no_longer_disarms_the_watchdog(tmp_path):
    """Any task or token holder can write the heartbeat: b"detached" used to make the watchdog stand
    down for good, and the pool outlived its driver. Now it is a value like any other: when it
    stops changing, Ray is stopped."""
    stopped, log = run_watchdog(tmp_path, b"detached", seconds=10)
    assert stopped, log
    assert "no driver heartbeat" in log and "standing down" not in log


def test_a_detached_head_ends_at_its_max_lifetime_although_its_heartbeat_still_beats(tmp_path):
    started = time.monotonic()
    stopped, log = run_watchdog(tmp_path, b"tick", seconds=12, SKYWARD_WATCH_LIFETIME="3")
    assert stopped and "max lifetime (3s) is reached" in log, log
    assert 3 <= time.monotonic() - started < 12


def test_without_a_lifetime_a_beating_pool_runs_on(tmp_path):
    stopped, log = run_watchdog(tmp_path, b"tick", seconds=5)
    assert not stopped, log


def test_the_head_script_passes_its_lifetime_to_the_watchdog_and_a_worker_has_none(tmp_path):
    head = boot(tmp_path, lifetime=7200)
    assert "SKYWARD_WATCH_LIFETIME=$(( 7200 > SECONDS ? 7200 - SECONDS : 1 ))" in head
    assert "sleep 7260;" in head  # the script's own backstop, a minute later
    assert "SKYWARD_WATCH_LIFETIME=" not in boot(tmp_path) and "WATCH_LIFETIME=" not in boot(tmp_path, role="worker")


def test_a_head_whose_watchdog_is_wedged_still_ends_at_its_lifetime(tmp_path):
    script = boot(tmp_path, lifetime=1, lifetime_backstop=1, boot_deadline=60)
    took, log = run_machine(tmp_path, script, ray_s=60, watchdog_s=60)
    assert powered_off(tmp_path) == 1 and "max lifetime of this pool (1s) is past" in log, log
    assert took < 10


def test_a_keepers_pool_gives_its_head_the_lifetime_left_and_no_limit_stays_possible():
    from skyward_ray.api.plan_walk import cluster_params
    from skyward_ray.api.request import KeeperMode, PoolRequest
    from skyward_ray.planning.detached import DetachedSpec

    request = PoolRequest.from_arguments([], provider="local", nodes=1)
    plan = request.plan()
    offer = plan.offers[0]

    def params(keeper: KeeperMode | None):
        return cluster_params(request, plan, plan.specs[offer.spec_index], offer, 60.0, keeper)

    an_hour_ago = time.time() - 3600
    keeper = KeeperMode.from_spec(DetachedSpec(name="p-1", max_lifetime="8h"), None, an_hour_ago)
    assert 7 * 3600 - 60 < params(keeper).max_lifetime <= 7 * 3600
    forever = KeeperMode.from_spec(DetachedSpec(name="p-1", max_lifetime="none"), None, an_hour_ago)
    assert params(forever).max_lifetime is None and params(None).max_lifetime is None


# -- 2. self-shutdown: unset variables, failing and hanging calls --------------------------------------
STUB = """#!/bin/bash
echo "$(basename "$0") $*" >> "$STUB_LOG"
n=$(grep -c "^$(basename "$0") " "$STUB_LOG")
if [ "$STUB_MODE" = hang ]; then exec sleep 1000; fi
if [ "$n" -le "$STUB_FAILS" ]; then
  case "$(basename "$0")" in curl) printf '\\n000'; exit 7 ;; *) exit 1 ;; esac
fi
case "$(basename "$0")" in curl) printf '{"success": true}\\n200' ;; esac
exit 0
"""


def run_shutdown(tmp_path: Path, command: str, stubs: tuple[str, ...], fails: int, mode: str = "fail",
                 timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a shutdown command in bash under `set -u` with none of the cloud's variables set, the
    given stubs first on PATH; returns the result and the stubs' calls in order."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in stubs:
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls"
    log.write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log), "STUB_FAILS": str(fails), "STUB_MODE": mode}
    done = subprocess.run(["bash", "-uc", command + "\necho shutdown-path-finished"], env=env, capture_output=True,
                          text=True, timeout=timeout)
    return done, log.read_text().splitlines()


def test_runpod_retries_runpodctl_then_the_api_with_every_variable_unset(tmp_path):
    done, calls = run_shutdown(tmp_path, runpod_shutdown(budget_s=60, call_s=5), ("runpodctl", "curl"), fails=2)
    assert "shutdown-path-finished" in done.stdout, done.stderr  # `set -u` did not abort it
    assert [c.split()[0] for c in calls] == ["runpodctl", "curl", "runpodctl", "curl", "runpodctl"], calls
    assert calls[0] == "runpodctl remove pod " and "retrying in 2s" in done.stderr and "retrying in 4s" in done.stderr


def test_runpod_without_runpodctl_retries_the_api_and_stops_at_its_answer(tmp_path):
    done, calls = run_shutdown(tmp_path, runpod_shutdown(budget_s=60, call_s=5), ("curl",), fails=2)
    assert calls and all(c.startswith("curl ") and "podTerminate" in c for c in calls) and len(calls) == 3
    assert "Bearer " in calls[0] and '{"success": true}' in done.stdout


def test_a_hanging_runpodctl_is_killed_by_its_bound_and_the_budget_ends_the_retries(tmp_path):
    started = time.monotonic()
    done, calls = run_shutdown(tmp_path, runpod_shutdown(budget_s=4, call_s=1), ("runpodctl", "curl"), fails=0,
                               mode="hang")
    assert "shutdown-path-finished" in done.stdout and "could not terminate this pod in 4s" in done.stderr
    assert len([c for c in calls if c.startswith("runpodctl")]) >= 2 and time.monotonic() - started < 30


def test_vast_retries_its_delete_for_minutes_not_twice_with_every_variable_unset(tmp_path):
    done, calls = run_shutdown(tmp_path, vast_shutdown("https://console.vast.ai", budget_s=120, call_s=5),
                               ("curl",), fails=3)
    assert "shutdown-path-finished" in done.stdout, done.stderr
    assert len(calls) == 4 and all("-X DELETE" in c and "/api/v0/instances//" in c for c in calls), calls
    assert '{"success": true}' in done.stdout


def test_a_hanging_curl_is_killed_by_its_bound(tmp_path):
    started = time.monotonic()
    done, calls = run_shutdown(tmp_path, vast_shutdown("https://console.vast.ai", budget_s=3, call_s=1), ("curl",),
                               fails=0, mode="hang")
    assert "could not destroy this instance in 3s" in done.stderr and len(calls) >= 2
    assert time.monotonic() - started < 30


def test_a_refusal_is_final_and_never_retried(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text('#!/bin/bash\necho call >> "$STUB_LOG"; printf \'{"error": "forbidden"}\\n403\'\n')
    (bin_dir / "curl").chmod(0o755)
    log = tmp_path / "calls"
    done = subprocess.run(["bash", "-uc", vast_shutdown("https://console.vast.ai", budget_s=60, call_s=5)],
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "STUB_LOG": str(log)}, capture_output=True,
                          text=True, timeout=30)
    assert log.read_text().splitlines() == ["call"] and "refused" in done.stderr


# -- 3. config values that reach the node shell ---------------------------------------------------------
@pytest.mark.parametrize("url", ["https://x.io/$(touch /tmp/pwned)", "https://x.io/`id`", 'https://x.io/"; id; "',
                                 "https://x.io/a b", "file:///etc/passwd", "https://", "https://x.io/?q=1&r=2",
                                 "https://x.io\n"])
def test_a_vast_server_url_with_shell_in_it_is_refused_naming_the_field(url):
    with pytest.raises(sky.SpecError, match=r"VastAI\.server_url=.*Fix: the API's base URL"):
        sky.VastAI(server_url=url)


def test_plain_server_urls_still_pass_and_are_quoted_where_they_are_rendered():
    for url in ("https://console.vast.ai", "http://10.0.0.1:8080/", "http://[::1]:80/v", "https://api.example.com/x"):
        assert sky.VastAI(server_url=url).server_url == url
    assert "https://console.vast.ai\"/api/v0/instances/${CONTAINER_ID:-}/\"" in vast_shutdown("https://console.vast.ai")


@pytest.mark.parametrize("user", ["root;id", "root\nAllowUsers evil", "-oProxyCommand=id", "a b", "$(id)", "",
                                  "x" * 33])
def test_an_ssh_user_that_is_not_a_plain_name_is_refused_naming_the_field(user):
    with pytest.raises(sky.SpecError, match=r"RunPod\.ssh_user=.*plain POSIX user name\. Fix"):
        sky.RunPod(ssh_user=user)
    with pytest.raises(sky.SpecError, match=r"VastAI\.ssh_user="):
        sky.VastAI(ssh_user=user)
    with pytest.raises(ValueError, match="plain POSIX user name"):
        sshd.sshd_lines(22, user, "ssh-ed25519 AAA")
    assert "AllowUsers ubuntu" in sshd.sshd_lines(22, "ubuntu", "ssh-ed25519 AAA")


@pytest.mark.parametrize("key", ["SKYWARD_INSTANCE_ID", "SKYWARD_ANYTHING", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
                                 "RAY_AUTH_TOKEN_PATH"])
def test_image_env_may_not_override_skywards_or_rays_auth_variables(key):
    with pytest.raises(sky.SpecError, match=f"Image.env: '{key}' is reserved"):
        sky.Image(env={key: "x"})


def test_the_boot_script_refuses_auth_variables_in_the_pools_env_and_exports_its_own_last(tmp_path):
    with pytest.raises(sky.SpecError, match="RAY_AUTH_MODE"):
        boot(tmp_path, env={"RAY_AUTH_MODE": "disabled"})
    script = boot(tmp_path, env={"SKYWARD_CLUSTER": "spoofed", "HF_HOME": "/data"})
    assert script.index("SKYWARD_CLUSTER=spoofed") < script.index("SKYWARD_CLUSTER=sky-boottest")
    assert sky.Image(env={"HF_HOME": "/data", "RAY_DEDUP_LOGS": "0"}).env["RAY_DEDUP_LOGS"] == "0"


# -- 4. the head's host key, made on the head and read back from its console ---------------------------
def _printed(path: Path) -> str:
    return subprocess.run(["bash", "-c", "\n".join(sshd.print_host_key_lines(str(path)))], capture_output=True,
                          text=True, timeout=10, check=True).stdout


def test_a_head_prints_its_own_host_key_and_the_driver_reads_back_exactly_that(tmp_path):
    from skyward_ray.cluster.ssh_keys import generate_keypair, printed_host_keys

    own = generate_keypair(tmp_path / "own", "ssh_host_ed25519_key", comment="root@i-0abc")
    console = "[   12.3] cloud-init[812]: Generating public/private ed25519 key pair.\n" + _printed(own.public_key)
    console += "skyward: installing Python\n" * 50 + _printed(own.public_key)  # printed again before Ray starts
    assert printed_host_keys(console) == {" ".join(own.public_line.split()[:2])}
    assert "PRIVATE" not in console
    # A key outside the markers (a task's output, a log line) is not a printed host key.
    other = generate_keypair(tmp_path / "other", "ssh_host_ed25519_key")
    assert printed_host_keys(console + other.public_line + "\n") == printed_host_keys(console)
    # A second key between the markers: two keys, which the AWS provider refuses rather than choose.
    assert len(printed_host_keys(console + _printed(other.public_key))) == 2
    # No key file: nothing to pin, and the console says why.
    missing = _printed(tmp_path / "none.pub")
    assert printed_host_keys(missing) == set() and "no SSH host key" in missing
