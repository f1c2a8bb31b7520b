"""A call's attempts, seen from the node that runs it: a worker your code ended is not retried.

Ray retries a task whose worker died (`max_retries`), whether the node was lost or the function
itself ended its process (`sys.exit()` in a thread, `os._exit()`, a segfault, the out-of-memory
killer). The first is the pool's fault and is retried; the second is the caller's error, like an
exception, and running it three more times only repeats it. Ray cannot tell them apart, so every
attempt leaves a record on its own node (a small file in the Ray session directory: node, worker,
log files; no network round trip) while it runs and removes it when it ends. A retry looks for
its predecessor's record on the nodes still alive: found, that worker died on a node that stayed
up, so the code ended it, and the retry fails with `FunctionCrashedError` (naming the node and its
log files) instead of running again; not found (the node is gone, or does not answer), it runs.
`sys.exit()` itself is caught and raised as that error at once. This module runs on the nodes (the
pool ships skyward_ray to them).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Callable
from typing import Any

from skyward_ray import names
from skyward_ray.errors import FunctionCrashedError

RECORD_DIR = "skyward-attempts"
#: how long a retry waits for a node to say whether it holds the previous attempt's record
LOOKUP_TIMEOUT_S = 10.0
#: how long a node that held a dead worker's record must go on answering before that death counts as
#: the code's (a node being reclaimed ends its workers a moment before its raylet)
CONFIRM_S = 5.0
DEFAULT_LOG_DIR = "/tmp/ray/session_latest/logs"
# The attribute Ray's worker SIGTERM handler puts on the SystemExit it raises (ray._raylet's
# raise_sys_exit_with_custom_error_message): a worker being ended with its node, not sys.exit().
RAY_TERMINATION = "ray_terminate_msg"


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as the task Ray runs: records the attempt, turns `sys.exit()` and a worker the code
    ended into `FunctionCrashedError`. Keeps `fn`'s names for Ray's task listings, but is not
    importable under them, so cloudpickle ships this wrapper and not a reference to `fn`."""

    def call(*args: Any, **kwargs: Any) -> Any:
        task_id, retry = _task()
        if retry:
            previous = _previous_attempt(task_id)
            if previous is not None:
                raise FunctionCrashedError(_crash_message(fn, previous))
        path = _record(task_id)
        try:
            return fn(*args, **kwargs)
        except SystemExit as exit_:
            if hasattr(exit_, RAY_TERMINATION):
                raise  # Ray's SIGTERM handler: the node's processes are being ended (a lost node), not the code's exit
            raise FunctionCrashedError(
                f"{fn.__qualname__} called sys.exit({exit_.code!r}) {_where(_attempt())}: a call that exits is "
                "the function's error, like an exception, and is not retried. Fix: raise an exception (or "
                "return) instead of sys.exit") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)

    call.__name__ = getattr(fn, "__name__", "call")
    call.__qualname__ = getattr(fn, "__qualname__", call.__name__)
    call.__doc__ = getattr(fn, "__doc__", None)
    return call


def _task() -> tuple[str, bool]:
    """This task's id, and whether this is a retry."""
    import ray
    from ray._private import worker

    task_id = ray.get_runtime_context().get_task_id() or "unknown"
    try:
        return task_id, worker.global_worker.core_worker.get_current_task_attempt_number() > 0
    except Exception:  # a Ray without it: always look
        return task_id, True


def _session_dir() -> str:
    try:
        from ray._private import worker

        return worker._global_node.get_session_dir_path()
    except Exception:  # a Ray that moved it: next to the default logs
        return os.path.dirname(DEFAULT_LOG_DIR)


def record_path(task_id: str) -> str:
    """Where this node keeps the record of a running attempt of `task_id`: under its own Ray node
    id, since Ray gives every node the head's temp dir path and nodes that share a filesystem
    (a local pool's) would otherwise read each other's records."""
    return os.path.join(_record_dir(), task_id)


@functools.cache
def _record_dir() -> str:
    """This node's record directory: the same for every call a worker process runs (it is on every
    call's path, so looked up once per process)."""
    import ray

    return os.path.join(_session_dir(), RECORD_DIR, ray.get_runtime_context().get_node_id())


def read_record(task_id: str) -> dict[str, Any] | None:
    """This node's record of an attempt of `task_id` whose worker did not end it; None if none."""
    try:
        with open(record_path(task_id), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


@functools.cache
def _attempt() -> dict[str, Any]:
    """This attempt: which node (skyward's index, address, Ray id), which worker, where its logs are.
    The same for every call a worker process runs, so read once per process: it is on every call's path."""
    import ray

    context = ray.get_runtime_context()
    return {"node_index": os.environ.get(names.ENV_NODE_INDEX), "node_ip": ray.util.get_node_ip_address(),
            "node_id": context.get_node_id(), "pid": os.getpid(), "worker_id": context.get_worker_id(),
            "log_dir": os.path.join(_session_dir(), "logs")}


@functools.cache
def _attempt_text() -> str:
    return json.dumps(_attempt())


def _record(task_id: str) -> str:
    path = record_path(task_id)
    with contextlib.suppress(OSError):
        try:
            handle = open(path, "w", encoding="utf-8")
        except FileNotFoundError:  # the node's first call: its directory is made once
            os.makedirs(os.path.dirname(path), exist_ok=True)
            handle = open(path, "w", encoding="utf-8")
        with handle:
            handle.write(_attempt_text())
    return path


def _previous_attempt(task_id: str) -> dict[str, Any] | None:
    """The record a dead worker left on a node that is still alive (this one first).

    A node being taken away (a spot reclaim, a host shutting down) ends its workers a moment before
    its raylet: asked at once, it may still answer with the record of the worker it just lost, and
    may even run this retry. So a record counts only if its node still holds it `CONFIRM_S` later
    (a retry running on a node that is going away goes with it, and Ray retries elsewhere)."""
    import time

    import ray

    this_node = ray.get_runtime_context().get_node_id()
    if read_record(task_id) is not None:
        found: tuple[str, dict[str, Any]] | None = (this_node, {})
    else:
        others = [node["NodeID"] for node in ray.nodes() if node["Alive"] and node["NodeID"] != this_node]
        found = _lookup(task_id, others)
    if found is None:
        return None
    time.sleep(CONFIRM_S)
    node = found[0]
    if node == this_node:
        return read_record(task_id)
    alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    confirmed = _lookup(task_id, [node]) if node in alive else None
    return confirmed[1] if confirmed is not None else None


def _lookup(task_id: str, nodes: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(node, record) of the first of `nodes` that holds a record of `task_id` and answers in time."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not nodes:
        return None
    lookup = ray.remote(num_cpus=0, max_retries=0)(read_record)
    refs = {lookup.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(task_id): node
            for node in nodes}
    done, _ = ray.wait(list(refs), num_returns=len(refs), timeout=LOOKUP_TIMEOUT_S)
    for ref in done:
        with contextlib.suppress(Exception):  # a node that went away while asked: no record there
            record = ray.get(ref)
            if record is not None:
                return refs[ref], record
    return None


def _crash_message(fn: Callable[..., Any], previous: dict[str, Any]) -> str:
    return (f"{fn.__qualname__} ended its worker process {_where(previous)} (sys.exit in a thread, os._exit, a "
            "segfault, or killed for memory) while its node stayed up: that is the function's error and it is "
            f"not retried. The worker's output is in {previous.get('log_dir') or DEFAULT_LOG_DIR}/worker-"
            f"{previous.get('worker_id')}-*.err and .out on that node (its prints reach this driver as they happen; "
            "SKYWARD_NODE_LOGS=1 adds Ray's own messages from the nodes)")


def _where(attempt: dict[str, Any]) -> str:
    index = attempt.get("node_index")
    node = f"node {index}" if index not in (None, "") else "a node"
    return f"on {node} ({attempt.get('node_ip')}, Ray node {str(attempt.get('node_id'))[:12]}, pid {attempt.get('pid')})"
