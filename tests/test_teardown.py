"""Nothing is left running, whatever way the driver leaves (DESIGN §2.4, layers 1-3, local provider)."""

from __future__ import annotations

import os
import signal
import time

import pytest

import skyward_ray as sky
from node_providers.local.process_host import end_processes, processes_with_marker
from tests.conftest import pool_processes, run_python, wait_for_line
from tests.fakecloud import UnbootableLocal


@sky.function
def square(x: int) -> int:
    return x * x


def processes_of(cluster_name: str) -> list:
    return processes_with_marker(cluster_name + "-*")


def test_normal_exit_ends_every_process():
    with sky.Compute(nodes=2) as pool:
        name = pool.name
        assert square(3) >> pool == 9
        assert len(processes_of(name)) > 4  # bash, ray start, gcs, raylet, ... on two nodes
    assert processes_of(name) == []
    with pytest.raises(sky.PoolClosedError, match="has exited"):
        square(1) >> pool
    with pytest.raises(sky.PoolClosedError):
        pool.nodes


def test_exception_inside_the_block_still_tears_down():
    with pytest.raises(ZeroDivisionError):
        with sky.Compute(nodes=1) as pool:
            name = pool.name
            1 / 0
    assert processes_of(name) == []


def test_keyboard_interrupt_tears_down():
    with pytest.raises(KeyboardInterrupt):
        with sky.Compute(nodes=1) as pool:
            name = pool.name
            raise KeyboardInterrupt
    assert processes_of(name) == []


DRIVER = """
import time, skyward_ray as sky
@sky.function
def square(x): return x * x
with sky.Compute(nodes=2, provider=sky.Local(heartbeat_grace=8)) as pool:
    assert square(2) >> pool == 4
    print("CLUSTER", pool.name, flush=True)
    time.sleep(300)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_to_the_driver_tears_down(sig):
    proc = run_python(DRIVER)
    try:
        name = wait_for_line(proc, "CLUSTER ")
        assert processes_of(name)
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 128 + sig
        assert processes_of(name) == []
    finally:
        proc.kill()
        proc.wait()


SIGNALLED_TEARDOWN = """
import atexit, os, signal, subprocess, skyward_ray as sky
signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the user's own, put back once the pool is gone

sender = None

@atexit.register
def stop_sending():  # at exit, before Python puts the OS default back
    if sender is not None:
        sender.kill()
        sender.wait()

@sky.function
def square(x): return x * x
with sky.Compute(nodes=1) as pool:
    assert square(2) >> pool == 4
    print("CLUSTER", pool.name, flush=True)
    # another process (as a user's `kill` would be; it needs no GIL): SIGTERMs back to back from here on
    # (until this process's exit stops it, or it has ended: the sender's parent is not this one any more)
    # It starts once told to: a SIGTERM inside Popen would leave it running with no name to stop it by.
    sender = subprocess.Popen(["bash", "-c", f"read -r _; while read -r _ _ _ ppid _ < /proc/$$/stat && "
                               f"[ $ppid = {os.getpid()} ]; do kill -TERM {os.getpid()}; done"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    sender.stdin.write(b"go\\n")
    sender.stdin.flush()
"""


def test_sigterms_all_through_the_teardown_are_held_then_obeyed():
    # They land all through the teardown, Ray's shutdown included (where Ray's core worker once
    # left the OS default, which killed the process mid-teardown): all are held until the machines
    # are gone, then obeyed as one exit.
    proc = run_python(SIGNALLED_TEARDOWN)
    try:
        name = wait_for_line(proc, "CLUSTER ")
        output = proc.communicate(timeout=120)[0]
        assert proc.returncode == 128 + signal.SIGTERM, output
        assert processes_of(name) == []
    finally:
        proc.kill()
        proc.wait()


def test_interpreter_exit_without_with_tears_down():
    code = """
import skyward_ray as sky
pool = sky.Compute(nodes=1).__enter__()
print("CLUSTER", pool.name, flush=True)
"""
    proc = run_python(code)
    name = wait_for_line(proc, "CLUSTER ")
    assert proc.wait(timeout=60) == 0
    assert processes_of(name) == []


def test_sigkilled_driver_nodes_stop_by_themselves_within_60s():
    proc = run_python(DRIVER)
    name = ""
    try:
        name = wait_for_line(proc, "CLUSTER ")
        assert processes_of(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        killed_at = time.monotonic()
        while processes_of(name) and time.monotonic() - killed_at < 60:
            time.sleep(1)
        assert processes_of(name) == [], "the nodes outlived their driver by 60 s"
        time.sleep(5)
        assert processes_of(name) == [], "a node process appeared again after the nodes had ended"
    finally:
        proc.kill()
        proc.wait()
        end_processes(processes_of(name), grace=1) if name else None


def test_the_users_ray_dir_is_never_touched(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    code = """
import skyward_ray as sky
@sky.function
def one(): return 1
with sky.Compute(nodes=1) as pool:
    print("RESULT", one() >> pool, flush=True)
"""
    proc = run_python(code, env={"HOME": str(home)})
    assert wait_for_line(proc, "RESULT ") == "1"
    assert proc.wait(timeout=60) == 0
    assert not (home / ".ray").exists()


def test_a_node_that_cannot_boot_fails_clearly_and_leaves_nothing():
    # A Ray object store below Ray's own minimum makes `ray start` exit at once.
    provider = UnbootableLocal(boot_timeout=60)
    before = {p.pid for p in pool_processes()}
    with pytest.raises(sky.ProvisioningError, match="stopped while booting") as caught:
        with sky.Compute(nodes=2, provider=provider):
            pass
    assert "Last lines of its log" in str(caught.value)
    assert [p for p in pool_processes() if p.pid not in before] == []


def test_two_pools_one_after_another_in_one_process_each_with_its_own_token():
    before = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    tokens = []
    for expected in (4, 9):
        with sky.Compute(nodes=1) as pool:
            tokens.append(os.environ["RAY_AUTH_TOKEN"])
            assert square(int(expected ** 0.5)) >> pool == expected
    assert tokens[0] != tokens[1]
    assert {k: os.environ.get(k) for k in before} == before


def test_a_boot_timeout_names_the_node_shows_its_log_and_leaves_nothing():
    before = {p.pid for p in pool_processes()}
    with pytest.raises(sky.BootTimeoutError, match=r"within 1s") as caught:
        with sky.Compute(nodes=2, provider=sky.Local(boot_timeout=1)):
            pass
    assert "Last lines of" in str(caught.value) and "sky-" in str(caught.value)
    assert [p for p in pool_processes() if p.pid not in before] == []


def test_a_second_pool_inside_an_open_one_is_refused_before_provisioning():
    with sky.Compute(nodes=1) as pool:
        before = {p.pid for p in pool_processes()}
        with pytest.raises(sky.SpecError, match="already a Ray driver"):
            with sky.Compute(nodes=1):
                pass
        assert {p.pid for p in pool_processes()} <= before | {p.pid for p in processes_of(pool.name)}
        assert square(3) >> pool == 9  # the open pool is untouched


def test_a_cancel_still_scheduled_when_the_pool_closes_does_not_end_the_users_process():
    """A failed group cancels its other calls, and force-ends the ones still running 2 s later (a
    `timeout=` call's deadline works the same way). Were that forced cancel to reach Ray while this
    process leaves the pool's cluster, Ray's core worker would end the whole process. The pool is
    left 1.2-1.8 s after the failure, so that leaving (about 2 s) spans the moment it is due."""
    code = """
import time, skyward_ray as sky

@sky.function
def fail():
    raise ValueError("first")

@sky.function
def nap(seconds):
    time.sleep(seconds)
    return seconds

for delay in (1.2, 1.5, 1.8):
    with sky.Compute(nodes=1) as pool:
        nap(0) >> pool
        try:
            sky.gather(fail(), nap(30)) >> pool
        except ValueError as error:
            print("FAILED", error, flush=True)
        time.sleep(delay)
    time.sleep(1)
print("ALIVE", flush=True)
"""
    proc = run_python(code)
    try:
        output, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert output.count("FAILED first") == 3, output[-3000:]
    assert "ALIVE" in output and proc.returncode == 0, output[-3000:]
