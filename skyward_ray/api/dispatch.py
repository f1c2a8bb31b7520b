"""How a `PendingFunction` becomes a Ray task, and how its result (or error) comes back.

Ray does the work: scheduling, retries on node loss (`max_retries`), object transfer. This module
adds only what makes a remote call feel local:

- a remote exception is re-raised as its original type, with the remote traceback as a note;
- `timeout=` cancels the task and raises `FunctionTimeoutError`;
- a group (`a & b`, `sky.gather`, `pool.map`) spreads over the pool and behaves the same whether it
  is sent with `>>` (wait) or `>` (a future): the first failure (an error, a timeout, a lost worker)
  cancels the rest of the group and is what the caller gets;
- `>` returns a `PoolFuture`, a real `concurrent.futures.Future` resolved by Ray's own completion
  callbacks (no thread per call), whose `cancel()` cancels the Ray tasks;
- `@` runs once on each node, pinned to it; a node lost during the call raises `NodeLostError`
  naming it (a pinned call cannot move elsewhere), and the other nodes' calls are cancelled.
"""

from __future__ import annotations

import concurrent.futures
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import (
    GetTimeoutError,
    LocalRayletDiedError,
    RayError,
    RaySystemError,
    RayTaskError,
    TaskCancelledError,
)
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from skyward_ray.api.function import PendingFunction
from skyward_ray.api.progress import Progress
from skyward_ray.console import console
from skyward_ray.errors import FunctionTimeoutError, NodeLostError, PoolLostError
from skyward_ray.planning.nodes import NodeInfo


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


FORCE_CANCEL_AFTER_S = 2.0  # a task stuck in one long C call ignores the interrupt; then its worker is ended
# `ray.get` waits in C++ and runs no signal handler meanwhile: waits are cut into slices this long, so
# an interruption (the pool's head lost, a signal) reaches the caller within one slice.
WAIT_SLICE_S = 1.0
_interrupt: BaseException | None = None  # set when the pool is lost: every wait raises it
# Asked when a wait fails with a system error (not the task's own): is the pool's head gone? (The
# pool's replacer notices too, but seconds later; a direct driver's raylet is the head's own.)
_loss_check: Callable[[], BaseException | None] | None = None


_CLUSTER_GONE_ERRORS = (LocalRayletDiedError, RaySystemError, ConnectionError)


def watch_pool(loss_check: Callable[[], BaseException | None] | None) -> None:
    global _loss_check
    _loss_check = loss_check


def interrupt_waits(error: BaseException | None) -> None:
    """Make every wait of this process raise `error` within one slice (None: stop doing so)."""
    global _interrupt
    _interrupt = error


def _check_interrupt() -> None:
    if _interrupt is not None:
        raise _interrupt


def _get(refs: Any, timeout: float | None) -> Any:
    """`ray.get`; an exception a signal handler raised inside Ray's C++ wait comes out as itself (Ray
    reports it as a SystemError when the wait also timed out), and any failure once the pool is lost
    (Ray Client's connection to a lost head, say) is the pool's loss."""
    try:
        return ray.get(refs, timeout=timeout)
    except SystemError as error:
        if error.__cause__ is not None and "with an exception set" in str(error):
            raise error.__cause__ from None
        raise
    except (GetTimeoutError, RayTaskError, TaskCancelledError):
        raise
    except Exception as error:
        _raise_if_lost(error)
        raise


def _raise_if_lost(error: BaseException) -> None:
    lost = _interrupt
    # only errors that say this driver lost its cluster (not a task's own failure) ask the cloud
    if lost is None and _loss_check is not None and isinstance(error, _CLUSTER_GONE_ERRORS):
        try:
            lost = _loss_check()
        except Exception:
            lost = None
    if lost is not None:
        raise lost from error


def _cancel(refs: Sequence[ray.ObjectRef], force: bool = False) -> None:
    if not ray.is_initialized():
        return  # the pool is gone (and Ray would start a fresh local cluster to serve the call)
    for ref in refs:
        try:
            ray.cancel(ref, force=force)
        except Exception:  # already finished, or the pool is going away
            pass


def _is_failure(value: Any) -> bool:
    """Whether a completion carries a failure rather than a result. A task may return an exception
    object as its value (a sweep collecting errors): only Ray's errors, and Ray Client's transport
    errors, are failures."""
    return isinstance(value, (RayError, ConnectionError)) or (
        isinstance(value, BaseException) and type(value).__module__.startswith("grpc"))


class _Deadlines:
    """One daemon thread for every pending deadline (`timeout=`), however many futures wait."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._expiring = threading.Lock()  # held while an expiry runs: `drop_all` waits for it
        self._thread: threading.Thread | None = None

    def add(self, deadline: float, expire: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._heap, (deadline, next(self._order), expire))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="skyward-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def drop_all(self) -> None:
        """Forget every pending deadline, in the caller's thread, before the pool's Ray goes away.

        A deadline holds its future and its Ray object refs, and may cancel tasks when it expires
        (a failed group's forced cancel, 2 s later). Had that cancel, or the last of those refs,
        reached Ray on this daemon thread while or after this process left the cluster, Ray's
        core worker would end the whole process ("The core worker has already been shutdown ...
        The process will exit"): seen as a test worker dying right after a pool closed.
        """
        with self._wake:
            dropped, self._heap = self._heap, []
            self._wake.notify()
        with self._expiring:  # an expiry already running (a cancel) finishes while Ray is still up
            dropped.clear()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    self._wake.wait(None if not self._heap else self._heap[0][0] - time.monotonic())
                _, _, expire = heapq.heappop(self._heap)
                self._expiring.acquire()  # taken before the heap's lock is let go: `drop_all` cannot slip between
            try:
                expire()
            except Exception:
                pass
            finally:
                del expire  # its refs go now, while the pool that made them is still up
                self._expiring.release()


_DEADLINES = _Deadlines()


def before_disconnect() -> None:
    """What a pool does before this process leaves its Ray cluster: no Ray object of it may be
    released by a background thread afterwards (see `_Deadlines.drop_all`)."""
    _DEADLINES.drop_all()


class PoolFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The result of a call or a group sent to a pool, as a `concurrent.futures.Future`.

    It is resolved by Ray's completion callbacks, so no thread waits for it; `wait` and
    `as_completed` work on it. `cancel()` cancels the Ray tasks and returns True until a result
    is in. The first failure of a group cancels the rest and is the future's exception.
    """

    def __init__(self, refs: list[ray.ObjectRef], pendings: list[PendingFunction[Any]],
                 shape: Callable[[list[Any]], Any] | None) -> None:
        super().__init__()
        self._refs = refs
        self._pendings = pendings
        self._shape = shape
        self._values: list[Any] = [None] * len(refs)
        self._finished: set[int] = set()  # indexes whose task has ended (any outcome)
        self._left = len(refs)
        self._settled = False
        self._guard = threading.Lock()
        started = time.monotonic()
        for index, (ref, pending) in enumerate(zip(refs, pendings)):
            if pending.function.options.timeout is not None:
                _DEADLINES.add(started + pending.function.options.timeout, lambda i=index: self._expired(i))
            # Ray's own completion hook (what ObjectRef.future() is built on), without a Future per call
            ref._on_completed(lambda outcome, i=index: self._one_done(i, outcome))

    def _settle(self) -> bool:
        """True for the one caller that may set the outcome."""
        with self._guard:
            if self._settled:
                return False
            self._settled = True
            return True

    def _one_done(self, index: int, value: Any) -> None:
        """Ray's callback: `value` is the task's result, or the exception it ended with."""
        with self._guard:
            self._finished.add(index)
        if self._settled:
            return
        if _is_failure(value):
            self._fail(self._translate(index, value))
            return
        with self._guard:
            self._values[index] = value
            self._left -= 1
            finished = self._left == 0
        if finished and self._settle():
            result = self._values[0] if self._shape is None else self._shape(self._values)
            try:
                self.set_result(result)
            except concurrent.futures.InvalidStateError:
                pass  # cancelled meanwhile

    def _translate(self, index: int, error: BaseException) -> BaseException:
        return _translate(error, index, None)

    def _stop_tasks(self) -> None:
        """Interrupt the unfinished tasks (KeyboardInterrupt in Python code); end the workers of
        those still running a moment later (a long call into C never sees the interrupt)."""
        _cancel(self._refs)

        def force() -> None:
            with self._guard:
                running = [ref for i, ref in enumerate(self._refs) if i not in self._finished]
            _cancel(running, force=True)

        _DEADLINES.add(time.monotonic() + FORCE_CANCEL_AFTER_S, force)

    def _fail(self, error: BaseException) -> None:
        if not self._settle():
            return
        self._stop_tasks()
        try:
            self.set_exception(error)
        except concurrent.futures.InvalidStateError:
            pass

    def _expired(self, index: int) -> None:
        # Settle with the timeout first: cancelling first let Ray's own completion callback for
        # the cancelled task (TaskCancelledError) win the race and become the future's error.
        with self._guard:
            if index in self._finished:
                return  # this call ended in time; its group may still wait on others
        if not self._settle():
            return
        try:
            self.set_exception(_timeout_error(self._pendings[index]))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile
        _cancel([self._refs[index]], force=True)
        self._stop_tasks()

    def cancel(self) -> bool:
        if not self._settle():
            return super().cancel()  # already resolved: False, as concurrent.futures says
        self._stop_tasks()
        return super().cancel()



def run(pending: PendingFunction[Any], options: dict[str, Any]) -> Any:
    """One call, waited for: `ray.get` directly (the fastest path for the common case)."""
    ref = _submit(pending, options)
    timeout = pending.function.options.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic()))
            try:
                return _get(ref, left)
            except GetTimeoutError:
                _check_interrupt()
                if deadline is not None and time.monotonic() >= deadline:
                    raise
    except GetTimeoutError:
        _cancel([ref], force=True)
        raise _timeout_error(pending) from None
    except RayTaskError as error:
        raise original_exception(error) from None
    except PoolLostError:  # nothing left to cancel on
        raise
    except BaseException:  # interrupted (Ctrl-C, SIGTERM): the task is not wanted any more
        _cancel([ref])
        raise


def _spread(options: dict[str, Any]) -> dict[str, Any]:
    """A group is meant to run in parallel over the pool: spread it, rather than pack the first node."""
    return options if "scheduling_strategy" in options else {**options, "scheduling_strategy": "SPREAD"}


def submit(pending: PendingFunction[Any], options: dict[str, Any]) -> PoolFuture:
    return PoolFuture([_submit(pending, options)], [pending], None)


def submit_many(pendings: list[PendingFunction[Any]], options: list[dict[str, Any]],
                as_tuple: bool) -> PoolFuture:
    refs = [_submit(p, _spread(o)) for p, o in zip(pendings, options)]
    return PoolFuture(refs, pendings, tuple if as_tuple else list)


def run_many(pendings: list[PendingFunction[Any]], options: list[dict[str, Any]]) -> list[Any]:
    refs = [_submit(p, _spread(o)) for p, o in zip(pendings, options)]
    return wait_group(refs, pendings, show_progress=True)


def wait_group(refs: list[ray.ObjectRef], pendings: list[PendingFunction[Any]],
               lost: Callable[[int, BaseException], BaseException] | None = None,
               show_progress: bool = False) -> list[Any]:
    """A group waited for here, with `PoolFuture`'s semantics (first failure cancels the rest) at
    `ray.get`'s speed: completions are collected in batches with `ray.wait`, so a failure is seen
    as soon as it happens rather than when the slowest member ends. With `show_progress`, a wait
    longer than a moment shows a live line on a terminal."""
    started = time.monotonic()
    # only on a terminal: the group path stays as lean as raw Ray's everywhere else
    progress = Progress(_group_label(pendings), len(refs)) if show_progress and console.interactive else None
    deadlines = {i: started + p.function.options.timeout for i, p in enumerate(pendings)
                 if p.function.options.timeout is not None}
    index = {ref: i for i, ref in enumerate(refs)}
    values: dict[int, Any] = {}
    remaining = list(refs)
    try:
        while remaining:
            _check_interrupt()
            try:
                ready, remaining = ray.wait(remaining, num_returns=len(remaining), timeout=0.05, fetch_local=False)
            except Exception as error:
                _raise_if_lost(error)
                raise
            if ready:
                try:
                    values.update(zip((index[r] for r in ready), ray.get(ready)))
                except RayError as error:
                    failed = next((index[r] for r in ready if _failed(r)), 0)
                    if progress is not None:
                        progress.update(done=len(values), failed=1)
                    raise _translate(error, failed, lost) from None
                if progress is not None:
                    progress.update(done=len(values))
            elif progress is not None:
                progress.update()
            now = time.monotonic()
            late = [i for i, deadline in deadlines.items() if deadline <= now and i not in values]
            if late:
                _cancel([refs[late[0]]], force=True)
                raise _timeout_error(pendings[late[0]])
    except PoolLostError:  # nothing left to cancel on
        raise
    except BaseException:  # a failure, a timeout, or an interrupted wait: the rest is not wanted any more
        unfinished = [r for r in refs if index[r] not in values]
        _cancel(unfinished)
        _DEADLINES.add(time.monotonic() + FORCE_CANCEL_AFTER_S, lambda: _cancel(unfinished, force=True))
        raise
    finally:
        if progress is not None:
            progress.stop()
    return [values[i] for i in range(len(refs))]


def _group_label(pendings: list[PendingFunction[Any]]) -> str:
    names = {p.function.__name__ for p in pendings}
    return f"{names.pop()} ×{len(pendings)}" if len(names) == 1 else f"group of {len(pendings)}"


def _failed(ref: ray.ObjectRef) -> bool:
    try:
        ray.get(ref, timeout=0)
        return False
    except Exception:
        return True


def _translate(error: BaseException, index: int,
               lost: Callable[[int, BaseException], BaseException] | None) -> BaseException:
    if isinstance(error, RayTaskError):
        return original_exception(error)
    if isinstance(error, RayError) and not isinstance(error, TaskCancelledError) and lost is not None:
        return lost(index, error)
    return error


def run_on_nodes(pending: PendingFunction[Any], options: dict[str, Any], nodes: list[NodeInfo]) -> list[Any]:
    """Once on each node, pinned to it (hard affinity, no retry elsewhere); results in node order."""
    refs = [
        _submit(pending, {**options, "max_retries": 0,
                          "scheduling_strategy": NodeAffinitySchedulingStrategy(node.ray_node_id, soft=False)})
        for node in nodes
    ]

    def lost(index: int, error: BaseException) -> BaseException:
        node = nodes[index]
        return NodeLostError(
            f"node {node.index} ({node.instance_id}, {node.ip}) was lost during `{pending.function.__name__}(...) "
            f"@ pool`; the calls on the other nodes were cancelled. A call sent with @ is pinned to its node and "
            f"cannot move: send it again once the pool has replaced the node (pool.replaced). Cause: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        )

    return wait_group(refs, [pending] * len(refs), lost=lost)
