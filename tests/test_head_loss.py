"""A head lost just before a function's first call on the pool still reaches the user as `PoolLostError`.

Ray exports a function to the head's GCS on its first submission, a request without a deadline;
sent to a dead head it held the driver's main thread inside Ray's C++ code, where the pool's loss
signal cannot interrupt it, until Ray's core worker ended the whole process five minutes later with
no teardown (seen in CI as the leak matrix's rare `local / head lost` hang). Here the order is forced:
the head's processes are all ended, then a function never called on the pool is called. The driver
is a subprocess: that is the process Ray would end.
"""

from __future__ import annotations

import subprocess

from tests.conftest import run_python

DRIVER = r"""
import time
import skyward_ray as sky
from node_providers.local.process_host import end_processes, processes_with_marker

@sky.function
def square(x):
    return x * x

@sky.function
def nap(seconds):
    import time
    time.sleep(seconds)
    return seconds

try:
    with sky.Compute(provider=sky.Local(), nodes=2) as pool:
        head = pool.nodes[0].instance_id
        assert square(3) >> pool == 9
        while left := processes_with_marker(head):  # a host failure: every process of the head at once
            end_processes(left, grace=0)
        lost_at = time.monotonic()
        nap(0.5) >> pool  # nap's first call: Ray exports it to the head's (dead) GCS
        print("RETURNED", flush=True)
except sky.PoolLostError as error:
    print(f"POOLLOST {time.monotonic() - lost_at:.1f}", flush=True)
print(f"EXITED {time.monotonic() - lost_at:.1f}", flush=True)
"""


def test_a_head_lost_before_a_functions_first_call_raises_pool_lost_and_the_block_exits():
    proc = run_python(DRIVER)
    try:
        output = proc.communicate(timeout=150)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        output = proc.communicate()[0]
        raise AssertionError(f"the driver still waited 150 s after its head was lost:\n{output}") from None
    lines = dict(line.split(" ", 1) for line in output.splitlines() if line.startswith(("POOLLOST", "EXITED")))
    assert proc.returncode == 0 and "POOLLOST" in lines and "EXITED" in lines, output
    print(f"PoolLostError {lines['POOLLOST']} s after the head was killed; the block exited at {lines['EXITED']} s")
    assert float(lines["EXITED"]) < 90, output
