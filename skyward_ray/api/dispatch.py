"""How a `PendingFunction` becomes a Ray task, and how its result (or error) comes back.

Ray does the work: scheduling, retries on node loss (`max_retries`), object transfer. This module
adds only what makes a remote call feel local: a remote exception is re-raised as its original
type with the remote traceback attached as a note, `timeout=` cancels the task, and `>` gives a
plain `concurrent.futures.Future`.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from skyward_ray.api.function import PendingFunction
from skyward_ray.errors import FunctionTimeoutError


def original_exception(error: BaseException) -> BaseException:
    """The user's own exception out of Ray's wrapper, with the remote traceback as a note."""
    if isinstance(error, RayTaskError):
        cause = error.cause
        if isinstance(cause, BaseException) and not isinstance(cause, RayTaskError):
            cause.add_note(f"Raised on the remote node; its traceback:\n{error}")
            return cause
    return error


def _submit(pending: PendingFunction[Any], options: dict[str, Any]) -> ray.ObjectRef:
    remote = pending.function.ray_function()
    if options:
        remote = remote.options(**options)
    return remote.remote(*pending.args, **pending.kwargs)


def _timeout_error(pending: PendingFunction[Any]) -> FunctionTimeoutError:
    return FunctionTimeoutError(
        f"{pending.function.__name__} ran longer than its timeout={pending.function.options.timeout:g}s "
        "and was cancelled; raise timeout= in @sky.function(...) if it needs longer"
    )


def _get(refs: list[ray.ObjectRef], pendings: list[PendingFunction[Any]], started: float) -> list[Any]:
    timeouts = [p.function.options.timeout for p in pendings]
    try:
        if not any(t is not None for t in timeouts):
            return ray.get(refs)
        results = []
        for ref, pending, timeout in zip(refs, pendings, timeouts):
            remaining = None if timeout is None else max(0.0, started + timeout - time.monotonic())
            try:
                results.append(ray.get(ref, timeout=remaining))
            except GetTimeoutError:
                ray.cancel(ref, force=True)
                raise _timeout_error(pending) from None
        return results
    except RayTaskError as error:
        for ref in refs:  # one failed: the rest of a group is not wanted any more
            try:
                ray.cancel(ref)
            except Exception:
                pass
        raise original_exception(error) from None


def run(pending: PendingFunction[Any], options: dict[str, Any]) -> Any:
    started = time.monotonic()
    return _get([_submit(pending, options)], [pending], started)[0]


def _spread(options: dict[str, Any]) -> dict[str, Any]:
    """A group is meant to run in parallel over the pool: spread it, rather than pack the first node."""
    return options if "scheduling_strategy" in options else {**options, "scheduling_strategy": "SPREAD"}


def run_many(pendings: list[PendingFunction[Any]], options: list[dict[str, Any]]) -> list[Any]:
    started = time.monotonic()
    refs = [_submit(p, _spread(o)) for p, o in zip(pendings, options)]
    return _get(refs, pendings, started)


def run_on_nodes(pending: PendingFunction[Any], options: dict[str, Any], ray_node_ids: list[str]) -> list[Any]:
    """One task per node, each pinned to its node (hard affinity); results in node order."""
    started = time.monotonic()
    refs = [
        _submit(pending, {**options, "scheduling_strategy": NodeAffinitySchedulingStrategy(node_id, soft=False)})
        for node_id in ray_node_ids
    ]
    return _get(refs, [pending] * len(refs), started)


def _future_from(refs: list[ray.ObjectRef], pendings: list[PendingFunction[Any]],
                 shape: type | None) -> concurrent.futures.Future[Any]:
    """A Future resolved by a waiter thread, so errors and timeouts behave as with `>>`."""
    future: concurrent.futures.Future[Any] = concurrent.futures.Future()
    started = time.monotonic()

    def wait() -> None:
        try:
            values = _get(refs, pendings, started)
            future.set_result(values[0] if shape is None else shape(values))
        except BaseException as error:  # the Future carries it to whoever calls .result()
            future.set_exception(error)

    future.set_running_or_notify_cancel()
    threading.Thread(target=wait, name="skyward-future", daemon=True).start()
    return future


def submit(pending: PendingFunction[Any], options: dict[str, Any]) -> concurrent.futures.Future[Any]:
    return _future_from([_submit(pending, options)], [pending], None)


def submit_many(pendings: list[PendingFunction[Any]], options: list[dict[str, Any]],
                as_tuple: bool) -> concurrent.futures.Future[Any]:
    refs = [_submit(p, o) for p, o in zip(pendings, options)]
    return _future_from(refs, pendings, tuple if as_tuple else list)
