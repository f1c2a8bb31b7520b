"""Shared test fixtures: quiet, token-authenticated, and nothing left running.

Every pool a test opens is a real multi-node Ray cluster on this machine (local processes bound to
127.x addresses). The `no_leftover_processes` fixture counts every process carrying a skyward
instance marker before and after each test; a test that leaves one fails, and the stray processes
are ended by process id so the next test starts clean. Nothing here ever runs `ray stop`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from node_providers.local.process_host import end_processes, identified_processes
from tests.hard_test_limit import pytest_runtest_protocol  # noqa: F401 - a hook: a stuck test ends its worker
from tests.timeouts import SIM_BOOT_TIMEOUT

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("SKYWARD_QUIET", "1")
REPO = Path(__file__).resolve().parent.parent


def _run_temp_dir() -> str:
    """A short temp dir of this test run's own (Ray's unix socket paths live below a local
    machine's directory, 107 bytes at most). Every local pool this run opens, in this process
    or in a driver subprocess (which inherits TMPDIR), keeps its machines below it, so the
    leftover checks below look at this run's pools and at no one else's."""
    for attempt in range(1000):
        path = f"/tmp/k{(os.getpid() + attempt) % 1000:03d}"
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise RuntimeError("no free /tmp/kNNN directory for the test run")


RUN_TEMP_DIR = _run_temp_dir()
os.environ["TMPDIR"] = RUN_TEMP_DIR
# Local pools' private dirs and every pool's state file (skyward_ray.cluster.pool_state) live here too.
os.environ["SKYWARD_RUNTIME_DIR"] = RUN_TEMP_DIR
tempfile.tempdir = None  # re-read TMPDIR


def _home(proc) -> str:
    try:
        return proc.environ().get("HOME", "")
    except Exception:
        return ""


def pool_processes(except_open: bool = False, of: str = "sky-") -> list:
    """Every live process of the local pools this test run launched (their HOME is below the run's
    temp dir); with `of`, of that pool only. With `except_open`, processes of pools still open in
    this test process (a module-scoped pool shared by several tests) are left out."""
    from skyward_ray.api.compute import _OPEN_POOLS

    open_names = {pool._cluster.name for pool in list(_OPEN_POOLS) if pool._cluster is not None}
    found = []
    for proc, marker in identified_processes():
        if not (marker or "").startswith(of) or not _home(proc).startswith(RUN_TEMP_DIR + "/"):
            continue
        if except_open and any(marker.startswith(name + "-") for name in open_names):
            continue
        found.append(proc)
    return found


@pytest.fixture
def package_index_unreachable(monkeypatch) -> str:
    """pip on the driver sees only an index where nothing listens (every other source of packages off):
    the Image cannot be checked before provisioning. Returns the index's URL."""
    import socket

    with socket.socket() as probe:  # a port where nothing listens: the connection is refused
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/simple"
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", url)
    for name in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(name, raising=False)
    return url


@pytest.fixture(autouse=True)
def no_leftover_processes():
    import ray

    from skyward_ray.api.compute import _OPEN_POOLS

    if ray.is_initialized() and not list(_OPEN_POOLS):
        ray.shutdown()
        pytest.fail("Ray was left initialized in the test process with no pool open (by the previous test)")
    before = {p.pid for p in pool_processes()}
    yield
    deadline = time.monotonic() + 10
    left = [p for p in pool_processes(except_open=True) if p.pid not in before]
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = [p for p in pool_processes(except_open=True) if p.pid not in before]
    if left:
        described = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in left]
        end_processes(left, grace=1)
        pytest.fail(f"{len(left)} pool processes were left running: {described}")


def run_python(code: str, timeout: float = 180, env: dict[str, str] | None = None,
               **popen: object) -> subprocess.Popen:
    """Start `code` in a fresh interpreter (a separate driver) and return the running process."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-c", code], env=full_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **popen)  # type: ignore[arg-type]


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = SIM_BOOT_TIMEOUT + 120) -> str:
    """Read the child's output until a line starts with `prefix`; fail with its output otherwise.

    A child that prints nothing more is ended at the deadline (SIGTERM: its teardown runs, and what
    it prints says where it was): a read blocks until a line comes, so a deadline checked between
    reads let a silent child hold the test until pytest-timeout, with its output lost."""
    seen: list[str] = []
    assert proc.stdout is not None
    decided = threading.Lock()
    found = False
    late = False

    def end_a_silent_child() -> None:
        nonlocal late
        with decided:
            if not found and proc.poll() is None:
                late = True
                proc.terminate()

    deadline = threading.Timer(timeout, end_a_silent_child)
    deadline.daemon = True
    deadline.start()
    try:
        for line in iter(proc.stdout.readline, ""):
            seen.append(line)
            if line.startswith(prefix):
                with decided:
                    found = not late
                if found:
                    return line[len(prefix):].strip()
                break
    finally:
        deadline.cancel()
    if proc.poll() is None:  # still running (a line after the deadline): SIGTERM runs its teardown
        proc.terminate()
    try:
        seen.append(proc.communicate(timeout=60)[0] or "")
    except subprocess.TimeoutExpired:
        proc.kill()
        seen.append(proc.communicate(timeout=30)[0] or "")
    when = f"within {timeout:g}s" if late else "before it ended"
    raise AssertionError(f"no line starting with {prefix!r} {when}; child output:\n{''.join(seen)}")


@pytest.fixture(scope="session", autouse=True)
def nothing_left_at_the_end():
    """After the whole run: no pool process born during it may still be alive, whether its pool
    was opened here or by a driver subprocess a test started."""
    started = time.time()
    yield
    time.sleep(2)  # anything a late teardown would still spawn has spawned by now
    left = [p for p in pool_processes() if p.create_time() >= started - 1]  # this run's pools, no one else's
    shutil.rmtree(RUN_TEMP_DIR, ignore_errors=True)
    if left:
        described = [f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in left]
        end_processes(left, grace=1)
        pytest.fail(f"{len(left)} pool processes outlived the test run: {described}")


MARKS_NAMESPACE = b"skyward-tests"


def wait_started(pool, tag: str, node: int, timeout: float = 60) -> None:
    """On the driver: wait until a call tagged `tag` has started on node `node` (an event, not a guess).

    The call records its start in the cluster's KV (namespace MARKS_NAMESPACE, key
    "<tag>:<node>:..."), which works on isolated machines where the driver's files are out of reach.
    """
    gcs = pool._cluster.driver.gcs_client()
    deadline = time.monotonic() + timeout
    while not gcs.internal_kv_keys(f"{tag}:{node}:".encode(), MARKS_NAMESPACE):
        assert time.monotonic() < deadline, f"no call tagged {tag!r} started on node {node} within {timeout:g}s"
        time.sleep(0.05)


# -- parallel runs (pytest-xdist, `--dist loadgroup`) ---------------------------------------------
# Each worker is its own test run (its own temp and runtime dir, above). A test module runs on one
# worker, so its module-scoped clouds and pools start once; a module parametrized over the clouds
# (the conformance suite, the leak matrix) runs one cloud per worker. The groups that take longest
# are handed out first, so the run is not left waiting on one of them at its end.
LONGEST_FIRST = ("docker", "tests/test_leaks.py", "tests/test_conformance.py", "tests/test_elastic.py",
                 "tests/test_local_provider.py", "tests/test_teardown.py", "tests/test_remote_driver.py")


# Every test that uses the Docker Engine runs on one worker, one after another ("docker"): they
# count what is on the engine, and the engine's small machine holds one pool of containers at a time.
DOCKER_MODULES = ("tests/test_container_pool.py",)


def _group(item: pytest.Item) -> str:
    module = item.nodeid.split("::")[0]
    callspec = getattr(item, "callspec", None)
    if module in DOCKER_MODULES or (callspec is not None and callspec.params.get("harness") == "container"):
        return "docker"
    if callspec is not None and "harness" in callspec.params:
        return f"{module}::{callspec.params['harness']}"
    return module


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadgroup` that still finishes when a worker crashes (tests/crash_safe_scheduling.py)."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from tests.crash_safe_scheduling import CrashSafeLoadGroupScheduling

    return CrashSafeLoadGroupScheduling(config, log)


def pytest_itemcollected(item: pytest.Item) -> None:
    item.add_marker(pytest.mark.xdist_group(_group(item)))  # before any hook sorts or groups the items


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        group = "docker" if _group(item) == "docker" else item.nodeid.split("::")[0]
        return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each module keeps its own order
