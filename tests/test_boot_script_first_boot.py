"""The boot script on a cloud's first boot, with a real bash and stand-in commands (no Ray, no network).

What a real machine gives the script, and what each case checks:

- cloud-init runs user data as root with `HOME` unset and a minimal environment: the script (which
  runs under `set -u`) must reach `ray start`, not abort on an unbound variable;
- an image may have no uv, no pip (the AWS DLAMI documents only python3), or nothing at all (Vast.ai's
  `ubuntu:22.04`): uv comes from pip where it works, else from the pinned wheel checked by its sha256;
- apt waits for a first boot's dpkg lock and is skipped when every package is installed already.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from skyward_ray.node import apt, sshd, uv_bootstrap
from tests.test_boot_script import boot, powered_off

BASH = shutil.which("bash") or "/bin/bash"
# What the functions under test use from the system; everything else on their PATH is a stand-in.
CORE_TOOLS = ("mkdir", "mktemp", "sha256sum", "install", "rm", "uname", "sleep", "cat", "id", "getent", "cut", "chmod", "cp")


def stub(directory: Path, name: str, body: str) -> None:
    (directory / name).write_text("#!/bin/sh\n" + body + "\n")
    (directory / name).chmod(0o755)


def isolated_bin(tmp_path: Path) -> Path:
    """A PATH directory holding only the core tools (links to the system's): no uv, curl, python3, unzip, apt."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for tool in CORE_TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is missing on this machine"
        (directory / tool).symlink_to(found)
    return directory


def run_bash(code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([BASH, "-c", "set -u\n" + code], env=env, capture_output=True, text=True, timeout=timeout)


# -- cloud-init's environment ------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["head", "worker"])
def test_a_script_run_as_cloud_init_runs_it_without_home_reaches_ray(tmp_path, role):
    """cloud-init: root, no HOME, a minimal environment. Before the fix the script stopped at
    `$HOME: unbound variable` (exporting uv's directory) and powered the machine off before Ray."""
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    stub(stubs, "uv", f'echo "HOME=${{HOME:-unset}}" >> {tmp_path}/uv-calls')  # uv is there; it records HOME
    script = boot(tmp_path, role=role, pip=["a-package"])
    machine = tmp_path / "machine"
    machine.mkdir()
    (tmp_path / "startup.sh").write_text(script)
    env = {"PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin", "SKYWARD_MACHINE_DIR": str(machine),
           "SKYWARD_INSTANCE_ID": "i-cloudinit", "SKYWARD_NODE_IP": "127.0.0.1", "STUB_RAY_S": "0.2",
           "STUB_WATCHDOG_S": "60"}
    assert "HOME" not in env
    done = subprocess.run([BASH, str(tmp_path / "startup.sh")], env=env, capture_output=True, text=True, timeout=30,
                          start_new_session=True)
    log = done.stdout + done.stderr
    assert "unbound variable" not in log, log
    assert "skyward: starting ray" in log and "ray exited" in log, log
    home = subprocess.run(["getent", "passwd", str(os.getuid())], capture_output=True, text=True).stdout.split(":")[5]
    assert (tmp_path / "uv-calls").read_text().splitlines()[0] == f"HOME={home}"  # from the password database
    assert powered_off(tmp_path) == 1


def test_a_runner_that_gives_no_environment_at_all_still_reaches_ray(tmp_path):
    """Not even PATH (env -i): the script sets the system's."""
    script = boot(tmp_path)
    machine = tmp_path / "machine"
    machine.mkdir()
    (tmp_path / "startup.sh").write_text(script)
    env = {"SKYWARD_MACHINE_DIR": str(machine), "SKYWARD_INSTANCE_ID": "i-bare", "SKYWARD_NODE_IP": "127.0.0.1",
           "STUB_RAY_S": "0.2", "STUB_WATCHDOG_S": "60"}
    done = subprocess.run(["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()), BASH,
                           str(tmp_path / "startup.sh")], capture_output=True, text=True, timeout=30,
                          start_new_session=True)
    assert "unbound variable" not in done.stdout + done.stderr and "ray exited" in done.stdout, done.stdout + done.stderr


def test_the_heads_sshd_directory_does_not_need_home():
    first = sshd.state_dir_lines()[0]  # the next one makes the directory
    done = subprocess.run(["/usr/bin/env", "-i", BASH, "-c", "set -u\n" + first + '\necho "$S"'],
                          capture_output=True, text=True, timeout=10)
    assert done.returncode == 0 and done.stdout.strip() == "/root/.skyward", done.stderr


# -- uv without pip ----------------------------------------------------------------------------------
def fake_uv_wheel(tmp_path: Path) -> tuple[Path, str]:
    """A wheel laid out as uv's (`uv-<version>.data/scripts/uv`), with a uv that says who it is."""
    wheel = tmp_path / "uv.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"uv-{uv_bootstrap.UV_VERSION}.data/scripts/uv", "#!/bin/sh\necho pinned-uv\n")
        archive.writestr("uv/__init__.py", "")
    return wheel, hashlib.sha256(wheel.read_bytes()).hexdigest()


def bootstrap(tmp_path: Path, bin_dir: Path, sha256: str | None = None, url: str = "https://pypi.example/uv.whl"):
    """Run `skyward_install_uv` with only `bin_dir` on PATH; returns (result, HOME)."""
    wheel, digest = fake_uv_wheel(tmp_path)
    wheels = {platform.machine(): uv_bootstrap.Wheel(url, sha256 or digest)}
    home = tmp_path / "home"
    home.mkdir()
    code = "\n".join(apt.function_lines() + uv_bootstrap.function_lines(wheels=wheels)) + f'\nexport PATH="{uv_bootstrap.BIN_DIR}:$PATH"\n' \
        + uv_bootstrap.FUNCTION + ' && uv'
    return run_bash(code, {"PATH": str(bin_dir), "HOME": str(home), "FAKE_WHEEL": str(wheel),
                           "CALLS": str(tmp_path / "calls")}), home


CURL = 'echo "curl $*" >> "$CALLS"; while [ $# -gt 1 ]; do [ "$1" = -o ] && cp "$FAKE_WHEEL" "$2"; shift; done'


def calls(tmp_path: Path) -> list[str]:
    path = tmp_path / "calls"
    return path.read_text().splitlines() if path.exists() else []


def test_uv_already_on_path_is_used_as_is(tmp_path):
    bin_dir = isolated_bin(tmp_path)
    stub(bin_dir, "uv", "echo image-uv")
    stub(bin_dir, "curl", CURL)
    result, _ = bootstrap(tmp_path, bin_dir)
    assert result.returncode == 0 and result.stdout.strip() == "image-uv" and calls(tmp_path) == []


def test_uv_comes_from_pip_where_pip_works(tmp_path):
    bin_dir = isolated_bin(tmp_path)
    stub(bin_dir, "python3", 'echo "python3 $*" >> "$CALLS"\n'
         'case "$*" in *"pip install"*) printf "#!/bin/sh\\necho pip-uv\\n" > "$HOME/.local/bin/uv"; '
         'chmod +x "$HOME/.local/bin/uv" ;; esac\nexit 0')
    result, _ = bootstrap(tmp_path, bin_dir)
    assert result.returncode == 0 and result.stdout.strip() == "pip-uv", result.stderr
    assert f"python3 -m pip install -q --user uv=={uv_bootstrap.UV_VERSION}" in calls(tmp_path)


@pytest.mark.parametrize("tools", ["curl+unzip", "python3 without pip"])
def test_without_pip_uv_is_the_pinned_wheel_checked_by_its_hash(tmp_path, tools):
    """The DLAMI documents python3, not pip: before the fix `python3 -m pip` failed and the boot ended."""
    bin_dir = isolated_bin(tmp_path)
    if tools == "curl+unzip":
        stub(bin_dir, "curl", CURL)
        (bin_dir / "unzip").symlink_to(shutil.which("unzip") or pytest.skip("unzip is not installed"))
    else:  # python3 whose pip is missing: it downloads (urllib, here from a file: URL) and unpacks
        stub(bin_dir, "python3", f'case "$*" in "-m pip"*) echo "No module named pip" >&2; exit 1 ;; esac\n'
             f'exec {os.path.realpath(sys.executable)} "$@"')
    url = "https://files.pythonhosted.org/uv.whl" if tools == "curl+unzip" else (tmp_path / "uv.whl").as_uri()
    result, home = bootstrap(tmp_path, bin_dir, url=url)
    assert result.returncode == 0 and result.stdout.strip() == "pinned-uv", result.stdout + result.stderr
    assert os.access(home / ".local/bin/uv", os.X_OK)
    if tools == "curl+unzip":
        assert any(c.startswith("curl ") and c.endswith(url) for c in calls(tmp_path))


def test_a_wheel_whose_hash_is_not_the_pinned_one_is_never_run(tmp_path):
    bin_dir = isolated_bin(tmp_path)
    stub(bin_dir, "curl", CURL)
    (bin_dir / "unzip").symlink_to(shutil.which("unzip") or pytest.skip("unzip is not installed"))
    result, home = bootstrap(tmp_path, bin_dir, sha256="0" * 64)
    assert result.returncode != 0 and "does not have the pinned sha256" in result.stdout
    assert not (home / ".local/bin/uv").exists()


def test_an_image_with_no_way_to_download_gets_curl_and_unzip_from_apt_first(tmp_path):
    """Vast.ai's ubuntu:22.04: no python3, no curl, no unzip."""
    bin_dir = isolated_bin(tmp_path)
    stub(bin_dir, "dpkg-query", "exit 1")
    stub(bin_dir, "apt-get", 'echo "apt-get $*" >> "$CALLS"; case "$*" in *install*) exit 100 ;; esac')
    result, _ = bootstrap(tmp_path, bin_dir)
    assert result.returncode != 0
    assert "apt-get -o DPkg::Lock::Timeout=300 -qq install -y curl ca-certificates unzip" in calls(tmp_path)


def test_every_pinned_wheel_is_on_files_pythonhosted_org_with_a_sha256():
    assert set(uv_bootstrap.WHEELS) == {"x86_64", "aarch64"}
    for wheel in uv_bootstrap.WHEELS.values():
        assert wheel.url.startswith("https://files.pythonhosted.org/packages/")
        assert f"uv-{uv_bootstrap.UV_VERSION}-py3-none-manylinux" in wheel.url and len(wheel.sha256) == 64


# -- apt ---------------------------------------------------------------------------------------------
def run_apt(tmp_path: Path, installed: str, apt_get: str = "exit 0") -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = isolated_bin(tmp_path)
    stub(bin_dir, "dpkg-query", f'for p; do :; done; case " {installed} " in *" $p "*) printf "install ok installed" ;; '
                                '*) exit 1 ;; esac')
    stub(bin_dir, "apt-get", 'echo "apt-get $*" >> "$CALLS"\n' + apt_get)
    result = run_bash("\n".join([*apt.function_lines(), apt.install_command(["curl", "a package"])]),
                      {"PATH": str(bin_dir), "CALLS": str(tmp_path / "calls")})
    return result, calls(tmp_path)


def test_apt_is_skipped_when_every_package_is_installed(tmp_path):
    """A baked image (the Container provider's nodes have no Internet) never runs apt-get."""
    result, apt_calls = run_apt(tmp_path, installed="curl a package")
    assert result.returncode == 0 and apt_calls == []


def test_apt_installs_only_what_is_missing_and_waits_for_the_dpkg_lock(tmp_path):
    result, apt_calls = run_apt(tmp_path, installed="curl")
    assert result.returncode == 0, result.stderr
    assert apt_calls == ["apt-get -o DPkg::Lock::Timeout=300 -qq update",
                         "apt-get -o DPkg::Lock::Timeout=300 -qq install -y a package"]


def test_a_locked_package_list_is_waited_for_and_other_failures_are_not(tmp_path):
    locked_once = ('case "$*" in *update*) [ -e "$CALLS.locked" ] && exit 0; : > "$CALLS.locked"; '
                   'echo "E: Could not get lock /var/lib/apt/lists/lock. It is held by process 42 (apt-get)"; exit 100 ;; esac')
    result, apt_calls = run_apt(tmp_path, installed="", apt_get=locked_once)
    assert result.returncode == 0 and [c.split()[-1] for c in apt_calls] == ["update", "update", "package"]
    assert "locked" in result.stdout


def test_the_heads_sshd_is_installed_through_the_same_apt_command():
    text = "\n".join(sshd.sshd_lines(22, "root", "ssh-ed25519 AAAA"))
    assert "DPkg::Lock::Timeout=300" in text and "dpkg-query" in text and "openssh-server" in text
    assert subprocess.run([BASH, "-n", "-c", text]).returncode == 0
