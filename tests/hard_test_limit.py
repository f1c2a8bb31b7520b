"""A hard limit on one test's time: past it, the worker process ends itself (a crash xdist reports).

pytest-timeout (600 s, `pyproject.toml`) raises in the test through SIGALRM, whose Python handler
runs only between bytecodes: a test whose thread sits inside native code (a Ray request without a
deadline, as a driver did after its head was lost) is never interrupted, and the whole run waits
until CI's own limit, printing nothing. faulthandler's watchdog is a native thread: at the hard
limit it writes every thread's stack and ends the process; the suite's scheduler
(crash_safe_scheduling) reports that test failed and the run goes on.

Imported into a conftest, `pytest_runtest_protocol` below is the hook.
"""

from __future__ import annotations

import faulthandler
import os
import sys
from collections.abc import Iterator

import pytest

HARD_LIMIT_S = float(os.environ.get("SKYWARD_TEST_HARD_LIMIT_S", "900"))  # past pytest-timeout's 600 s


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    faulthandler.dump_traceback_later(HARD_LIMIT_S, exit=True, file=sys.__stderr__)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
