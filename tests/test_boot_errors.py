"""A boot failure names the step it failed at, first, whatever else the node's log shows.

The boot script says each step it starts ("skyward: installing the image packages", "skyward:
starting ray", ...) and how it ends ("skyward: X failed; ending this machine"); the launch errors
(`node X stopped while booting`, the boot timeouts) start with "failed at step: ..." read from the
node's log, so a failure under load that shows only Ray's noise still says where the boot was.
"""

from __future__ import annotations

import pytest

import skyward_ray as sky
from skyward_ray.cluster.boot_wait import last_boot_step
from tests.conftest import pool_processes
from tests.fakecloud import UnbootableLocal


@pytest.mark.parametrize(("log", "step"), [
    ("skyward: installing the image packages\nERROR: No matching distribution found for x\n"
     "skyward: installing Image.pip failed; ending this machine", "installing Image.pip"),
    ("skyward: apt install failed; ending this machine", "apt install"),
    ("skyward: starting ray\n" + "Traceback line\n" * 50 + "skyward: ray exited (1); ending this machine",
     "starting ray (then: ray exited (1); ending this machine)"),
    ("skyward: installing Python 3.11.9 and ray 2.60.0\nresolving...", "installing Python 3.11.9 and ray 2.60.0"),
])
def test_the_last_step_is_read_from_the_scripts_own_lines(log, step):
    assert last_boot_step(log) == step


def test_a_log_without_a_step_says_so():
    assert last_boot_step("(the console output is empty so far)").startswith("unknown")


def test_a_node_that_ends_while_booting_names_its_step_first():
    # An object store below Ray's minimum: `ray start` exits at once, after "skyward: starting ray".
    before = {p.pid for p in pool_processes()}
    with pytest.raises(sky.ProvisioningError, match="stopped while booting") as caught:
        with sky.Compute(nodes=1, provider=UnbootableLocal(boot_timeout=60)):
            pass
    assert str(caught.value).startswith("failed at step: starting ray"), str(caught.value)
    assert "Last lines of its log" in str(caught.value)
    assert [p for p in pool_processes() if p.pid not in before] == []


def test_a_boot_timeout_names_the_step_first():
    before = {p.pid for p in pool_processes()}
    with pytest.raises(sky.BootTimeoutError, match="within 1s") as caught:
        with sky.Compute(nodes=1, provider=sky.Local(boot_timeout=1)):
            pass
    assert str(caught.value).startswith("failed at step: "), str(caught.value)
    assert [p for p in pool_processes() if p.pid not in before] == []
