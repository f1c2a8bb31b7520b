"""A call whose own code ends its worker is the caller's error, not retried (issue 22, item 5), and
what the caller reads is clean (item 8): the error names the node and the worker's log files, the
remote traceback note has no terminal codes or Ray/cloudpickle frames, and Ray's "(raylet)" lines
stay off the driver's stderr unless SKYWARD_NODE_LOGS=1. One local pool, in a driver subprocess
(its stderr is what a user sees)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_python

DRIVER = r'''
import ctypes, glob, json, os, sys
import skyward_ray as sky

COUNT = sys.argv[1] if len(sys.argv) > 1 else os.environ["CRASH_COUNT_DIR"]

def runs(name):
    path = os.path.join(COUNT, name)
    return len(open(path).read().splitlines()) if os.path.exists(path) else 0

def mark(name):
    with open(os.path.join(COUNT, name), "a") as handle:
        handle.write("run\n")

@sky.function
def exits(code):
    mark("exits")
    sys.exit(code)

@sky.function
def hard_exit():
    mark("hard_exit")
    os._exit(3)

@sky.function
def segfault():
    mark("segfault")
    ctypes.string_at(0)

@sky.function
def fails():
    raise ValueError("plain failure")

results = {}
with sky.Compute(nodes=2) as pool:
    for name, call in (("exits", lambda: exits(1)), ("hard_exit", hard_exit), ("segfault", segfault)):
        try:
            call() >> pool
            results[name] = {"error": None}
        except Exception as error:
            message = str(error)
            logs = [part for part in message.split() if "/worker-" in part]
            files = glob.glob(logs[0]) if logs else []
            results[name] = {"error": type(error).__name__, "message": message, "runs": runs(name),
                             "log_files": files}
    try:
        fails() >> pool
    except ValueError as error:
        results["note"] = "\n".join(getattr(error, "__notes__", []))
print("RESULTS " + json.dumps(results), flush=True)
'''


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    count_dir = tmp_path_factory.mktemp("crash-count")
    proc = run_python(DRIVER, env={"CRASH_COUNT_DIR": str(count_dir), "SKYWARD_QUIET": "1"})
    output, _ = proc.communicate(timeout=280)
    assert proc.returncode == 0, output
    line = next(line for line in output.splitlines() if line.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):]), output


def test_sys_exit_is_the_functions_error_and_runs_once(outcome):
    results, _ = outcome
    exits = results["exits"]
    assert exits["error"] == "FunctionCrashedError" and exits["runs"] == 1, exits
    assert "sys.exit(1)" in exits["message"] and "not retried" in exits["message"]
    assert "on node " in exits["message"]


@pytest.mark.parametrize("name", ["hard_exit", "segfault"])
def test_a_worker_the_code_ends_is_not_retried_and_named(outcome, name):
    results, _ = outcome
    crash = results[name]
    assert crash["error"] == "FunctionCrashedError" and crash["runs"] == 1, crash
    assert "on node " in crash["message"] and "SKYWARD_NODE_LOGS=1" in crash["message"]
    assert crash["log_files"], f"the log path it names matches no file: {crash['message']}"


def test_the_remote_traceback_note_is_plain_and_the_users_own(outcome):
    results, _ = outcome
    note = results["note"]
    assert "plain failure" in note and "in fails" in note
    assert "\x1b[" not in note
    assert "cloudpickle" not in note and "/ray/" not in note and "attempts.py" not in note


def test_no_raylet_flood_on_the_drivers_stderr(outcome):
    _, output = outcome
    assert "(raylet)" not in output, output[-3000:]
