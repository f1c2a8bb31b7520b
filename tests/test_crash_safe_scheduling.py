"""The suite's own `--dist loadgroup` finishes, with the right counts, when a worker crashes
(and a test stuck past the hard limit, tests/hard_test_limit.py, is such a crash).

Each case is a small project run by a real nested `pytest -n N --dist loadgroup` using the suite's
scheduler (tests/crash_safe_scheduling.py); a test in it ends its worker's process the way a native
crash does (`os._exit`, no report). With pytest-xdist 3.8.0's own scheduler every one of these runs
waits forever after the crash; here each must end, report the crash as one failure, run every other
test exactly once, and not run the crashed test again.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

CONFTEST = """
import pytest
from tests.crash_safe_scheduling import CrashSafeLoadGroupScheduling
from tests.hard_test_limit import pytest_runtest_protocol

@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    return CrashSafeLoadGroupScheduling(config, log)
"""

CRASH = "import os\n\ndef test_crash():\n    os._exit(1)\n"
PASSING = "def test_{0}_one():\n    pass\n\ndef test_{0}_two():\n    pass\n\ndef test_{0}_three():\n    pass\n"
SINGLE = "import time\n\ndef test_{0}():\n    time.sleep({1})\n"

CASES = {
    # the crash first in its group, tests after it in the same group (#1371: it must not run again)
    "crash-then-more-in-its-group": (2, {"test_a.py": PASSING.format("a"),
                                         "test_b.py": CRASH + "\ndef test_after():\n    pass\n",
                                         "test_c.py": SINGLE.format("c", 0), "test_d.py": SINGLE.format("d", 1)}),
    # the dead worker had finished groups before it crashed (#1323, #1378: none may come back empty)
    "finished-groups-before-the-crash": (1, {"test_1.py": PASSING.format("first"),
                                             "test_2.py": SINGLE.format("second", 0),
                                             "test_3.py": CRASH, "test_4.py": PASSING.format("fourth")}),
    # the replacement is handed one single-test group, the last one (#1327)
    "last-group-is-one-test": (1, {"test_1.py": CRASH, "test_2.py": SINGLE.format("only", 0)}),
}


def run_nested(tmp_path: Path, workers: int, files: dict[str, str], env: dict[str, str] | None = None) -> str:
    """`pytest -n WORKERS --dist loadgroup` over `files` with the suite's scheduler; its output."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    nested = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:timeout",
                               "-n", str(workers), "--dist", "loadgroup", "-rA", str(tmp_path)],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", **(env or {})},
                              start_new_session=True)  # its workers too are ended if it hangs
    try:
        out = nested.communicate(timeout=120)[0]
    except subprocess.TimeoutExpired:
        os.killpg(nested.pid, signal.SIGKILL)
        out = nested.communicate()[0]
        raise AssertionError(f"the nested run did not end within 120 s:\n{out}") from None
    assert nested.returncode == 1, out
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_a_crashed_worker_costs_one_failure_and_the_run_still_ends(case: str, tmp_path: Path) -> None:
    workers, files = CASES[case]
    expected_passes = sum(text.count("def test_") for text in files.values()) - 1
    out = run_nested(tmp_path, workers, files)
    assert re.search(rf"\b1 failed, {expected_passes} passed\b", out), out
    assert "crashed while running" in out and "test_crash" in out, out
    assert len(re.findall(r"^PASSED ", out, flags=re.MULTILINE)) == expected_passes, out
    assert out.count("node down") == 1, "the crashed test ran again on the replacement worker:\n" + out


def test_a_test_past_the_hard_limit_ends_its_worker_and_the_run_goes_on(tmp_path: Path) -> None:
    """A test stuck where pytest-timeout's signal cannot reach it (here: no pytest-timeout at all)
    is ended at the hard limit, reported as its worker's crash, and the other tests still run."""
    files = {"test_stuck.py": SINGLE.format("stuck", 60), "test_rest.py": PASSING.format("rest")}
    started = time.monotonic()
    out = run_nested(tmp_path, 1, files, {"SKYWARD_TEST_HARD_LIMIT_S": "3"})
    assert time.monotonic() - started < 45, out
    assert re.search(r"\b1 failed, 3 passed\b", out) and "crashed while running 'test_stuck.py::test_stuck'" in out, out
