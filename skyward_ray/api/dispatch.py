"""How a `PendingFunction` becomes a Ray task, and how its result (or error) comes back.

Ray does the work: scheduling, retries on node loss (`max_retries`), object transfer. This module
adds only what makes a remote call feel local (what an outcome means is `calls.Calls`):

- on a pool reached through an SSH tunnel every call goes over the head's call channel
  (`channel_client`: one round trip, where Ray Client costs two or more; a group in one message),
  its outcomes pushed back as they come; elsewhere through Ray, where `>>` waits on `ray.get`
  directly (the fastest path for the common case);
- a group (`a & b`, `sky.gather`, `pool.map`), `@`, `pool.as_completed` and `pool.sweep` wait
  through ONE iterator, `Completions`: it owns deadlines (`timeout=` raises
  `FunctionTimeoutError`), cancel and forced cancel, interrupts (the pool lost, a signal, within
  one slice) and the pool-loss check, so they all behave alike. For a group, the first failure
  (an error, a timeout, a lost worker) cancels the rest and is what the caller gets;
- `>` returns a `future.PoolFuture` over the same `Calls`, resolved by completion callbacks
  (Ray's, or the channel's: no thread per call), whose `cancel()` cancels the Ray tasks;
- `@` runs once on each node, pinned to it; a node lost during the call raises `NodeLostError`
  naming it (a pinned call cannot move elsewhere), and the other nodes' calls are cancelled.

A pool owns one `Dispatcher`: its `PoolWatch` (interruption, loss check, deadlines) and the
top-level modules it ships by reference (how `@sky.function` code is pickled).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import ray
from ray.exceptions import GetTimeoutError, RayError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from skyward_ray.api.calls import (
    FORCE_CANCEL_AFTER_S,
    Calls,
    cancel,
    is_failure,
    original_exception,
    timeout_error,
)
from skyward_ray.api.channel_client import CallChannel, ChannelError, ChannelRef
from skyward_ray.api.function import PendingFunction
from skyward_ray.api.future import PoolFuture
from skyward_ray.api.progress import Progress
from skyward_ray.api.watch import WAIT_SLICE_S, PoolWatch
from skyward_ray.console import console
from skyward_ray.errors import FunctionTimeoutError, NodeLostError, PoolLostError
from skyward_ray.planning.nodes import NodeInfo

_log = logging.getLogger(__name__)
POLL_S = 0.05  # how long one `ray.wait` of a group lasts: failures are seen this soon, interrupts too

__all__ = ["FORCE_CANCEL_AFTER_S", "POLL_S", "WAIT_SLICE_S", "Completion", "Completions", "Dispatcher",
           "PoolFuture", "original_exception"]


class Completion(NamedTuple):
    """One call of a wait that ended: its index in the calls, and its value or its error."""

    index: int
    value: Any
    error: BaseException | None


class Completions:
    """Calls as they finish, in completion order: THE wait of groups, `@`, maps and sweeps.

        with Completions(calls) as completions:
            for index, value, error in completions: ...

    Each slice (`POLL_S`) first raises the pool's loss if it was lost, then collects what
    finished (`ray.wait` without fetching, then one `ray.get` of the batch, at `ray.get`'s speed),
    then ends the calls past their deadline (force-cancelled, `FunctionTimeoutError`). A failure
    is raised (`return_exceptions=False`: a group) or yielded (a sweep). Leaving the `with` block
    before the end, for any reason but the pool's loss, cancels the calls still running.
    """

    def __init__(self, calls: Calls, *, return_exceptions: bool = False, progress: Progress | None = None,
                 poll: float = POLL_S) -> None:
        self.calls = calls
        self._return_exceptions = return_exceptions
        self._progress = progress
        self._poll = poll
        self._remaining: dict[int, Any] = dict(enumerate(calls.refs))  # index -> ref, of calls not finished
        self._index = {ref: i for i, ref in enumerate(calls.refs)}
        # calls over the call channel: their outcomes come pushed, in completion order (no polling)
        self._finished: queue.SimpleQueue[int] | None = None
        if calls.refs and isinstance(calls.refs[0], ChannelRef):
            finished = self._finished = queue.SimpleQueue()
            for index, ref in enumerate(calls.refs):
                ref.slot.add_done_callback(lambda _, i=index: finished.put(i))

    def __enter__(self) -> "Completions":
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        if self._progress is not None:
            self._progress.stop()
        # a failure, a timeout, an interrupted wait, or left early: the rest is not wanted any more
        # (unless the pool is lost: nothing left to cancel on)
        if self._remaining and not isinstance(exc, PoolLostError):
            self.calls.stop(lambda: list(self._remaining.values()))

    def __iter__(self) -> Iterator[Completion]:
        calls, watch, progress = self.calls, self.calls.watch, self._progress
        deadlines = calls.deadlines(time.monotonic())
        done = failed = 0
        while self._remaining:
            watch.check_interrupt()
            batch = self._next_batch(deadlines)
            if batch:
                failures = sum(1 for c in batch if c.error is not None)
                done, failed = done + len(batch) - failures, failed + failures
                if progress is not None:
                    progress.update(done=done, failed=failed)
                for completion in batch:
                    deadlines.pop(completion.index, None)
                    yield self._outcome(completion)
            elif progress is not None:
                progress.update()
            if deadlines:
                now = time.monotonic()
                for index in [i for i, deadline in deadlines.items() if deadline <= now]:
                    del deadlines[index]
                    ref = self._remaining.pop(index, None)
                    if ref is None:
                        continue  # finished meanwhile
                    cancel([ref], force=True)
                    yield self._outcome(Completion(index, None, calls.timeout_error(index)))

    def _next_batch(self, deadlines: dict[int, float]) -> list[Completion]:
        """What finished within one slice: Ray's (`ray.wait`, then one `ray.get`), or the channel's
        (pushed: the wait ends at the first outcome, the next deadline, or a whole slice)."""
        if self._finished is None:
            try:
                ready, _ = ray.wait(list(self._remaining.values()), num_returns=len(self._remaining),
                                    timeout=self._poll, fetch_local=False)
            except Exception as error:
                self.calls.watch.raise_if_lost(error)
                raise
            for ref in ready:
                del self._remaining[self._index[ref]]
            return self._collect(ready) if ready else []
        wait = WAIT_SLICE_S if not deadlines else max(0.0, min(WAIT_SLICE_S, min(deadlines.values()) - time.monotonic()))
        try:
            indexes = [self._finished.get(timeout=wait)]
        except queue.Empty:
            return []
        while True:
            try:
                indexes.append(self._finished.get_nowait())
            except queue.Empty:
                break
        batch = []
        for index in indexes:
            ref = self._remaining.pop(index, None)
            if ref is not None:  # else timed out already
                batch.append(_channel_completion(self.calls, index, ref))
        return batch

    def _collect(self, ready: list[ray.ObjectRef]) -> list[Completion]:
        """The values of finished calls: one `ray.get` for the batch; one by one only when it failed."""
        try:
            return [Completion(self._index[ref], value, None) for ref, value in zip(ready, ray.get(ready))]
        except RayError:
            pass
        except Exception as error:
            self.calls.watch.raise_if_lost(error)
            raise
        batch = []
        for ref in ready:
            index = self._index[ref]
            try:
                batch.append(Completion(index, ray.get(ref), None))
            except RayError as error:
                batch.append(Completion(index, None, self.calls.translate(index, error)))
        return batch

    def _outcome(self, completion: Completion) -> Completion:
        if completion.error is not None and not self._return_exceptions:
            raise completion.error from None
        return completion

    def values(self) -> list[Any]:
        """Every call's value in argument order (the first failure raised, the rest cancelled)."""
        values: list[Any] = [None] * len(self.calls.refs)
        for index, value, _ in self:
            values[index] = value
        return values


class Dispatcher:
    """One pool's way of sending calls: its watch, and the modules it ships by reference."""

    def __init__(self) -> None:
        self.watch = PoolWatch()
        # top-level modules the pool's job ships by reference (`staging.StagedCode.shipped`)
        self.shipped: frozenset[str] = frozenset()
        # a pool reached through an SSH tunnel: its calls go over the head's call channel (one round trip)
        self.channel: CallChannel | None = None
        self._opening: threading.Thread | None = None
        self._closing = threading.Event()
        self._exported: set[Any] = set()  # Ray functions submitted once on this pool's job (so exported)

    def open_channel(self, open_: Callable[[Callable[[], None]], CallChannel]) -> None:
        """Open the call channel in the background (`open_(on_drop)`); calls use it once it is open.
        One that does not open is logged, and calls keep going through Ray Client."""
        self._closing.clear()

        def opening() -> None:
            try:
                channel = open_(self._channel_dropped)
            except Exception as error:  # noqa: BLE001 - calls still work, through Ray Client
                _log.warning("the head's call channel did not open (%s: %s); calls go through Ray Client",
                             type(error).__name__, error)
                return
            if self._closing.is_set():
                channel.close()
            else:
                self.channel = channel

        self._opening = threading.Thread(target=opening, name="skyward-call-channel-open", daemon=True)
        self._opening.start()

    def send(self, pending: PendingFunction[Any], options: dict[str, Any]) -> ray.ObjectRef:
        """Submit one call as a Ray task with `options`."""
        function = pending.function.ray_function(self.shipped)
        remote = function.options(**options) if options else function
        if function in self._exported:
            return remote.remote(*pending.args, **pending.kwargs)
        ref = self._first_submission(lambda: remote.remote(*pending.args, **pending.kwargs))
        self._exported.add(function)
        return ref

    def _first_submission(self, submit: Callable[[], ray.ObjectRef]) -> ray.ObjectRef:
        """A function's first call on the pool, submitted from a helper thread and waited for in slices.

        On its first submission Ray exports the function to the head's GCS, a request without a
        deadline. Had the head gone just then, this thread would sit inside Ray's C++ code, deaf to
        the pool's loss (its signal handler runs only between Python bytecodes), until Ray's core
        worker ended the whole process 300 s later (`DRIVER_GCS_PATIENCE_S`), teardown unrun (seen
        in CI: a driver's first `nap(...) >> pool` right after its head was killed). Later
        submissions of it are asynchronous inside Ray, so they go directly.
        """
        outcome: list[Any] = []

        def submitting() -> None:
            try:
                outcome.append((True, submit()))
            except BaseException as error:  # noqa: BLE001 - raised in the caller's thread below
                outcome.append((False, error))

        helper = threading.Thread(target=submitting, name="skyward-first-submission", daemon=True)
        helper.start()
        while helper.is_alive():
            helper.join(WAIT_SLICE_S)
            self.watch.check_interrupt()  # the pool's loss, raised here rather than after Ray gives up
        [(ok, value)] = outcome
        if not ok:
            raise value
        return value

    def _channel_call(self, pending: PendingFunction[Any],
                      options: dict[str, Any]) -> tuple[str, Callable[[], bytes], bytes, bool]:
        """One call as the channel sends it: its function's key and bytes, its pickled arguments and
        options, and whether it may run twice (its max_retries is not 0: Ray may rerun it too)."""
        from ray import cloudpickle

        key, function_bytes = pending.function.channel_function(self.shipped)
        rerunnable = options.get("max_retries", pending.function.options.max_retries) != 0
        return key, function_bytes, cloudpickle.dumps((pending.args, pending.kwargs, options)), rerunnable

    def send_all(self, pendings: Sequence[PendingFunction[Any]], options: Sequence[dict[str, Any]]) -> list[Any]:
        """Submit calls: over the call channel in one message where the pool has one (`ChannelRef`s),
        else through Ray one by one (object refs)."""
        channel = self.channel
        if channel is not None and channel.usable and not any(map(_holds_ray_handles, pendings)):
            try:
                return channel.call_many([self._channel_call(p, o) for p, o in zip(pendings, options)])
            except ChannelError:
                pass  # gone for good since `usable` was asked: through Ray
        return [self.send(p, o) for p, o in zip(pendings, options)]

    def send_group(self, pendings: list[PendingFunction[Any]], options: Sequence[dict[str, Any]]) -> Calls:
        """Submit calls meant to run in parallel over the pool: spread, rather than pack the first node."""
        refs = self.send_all(pendings, [o if "scheduling_strategy" in o else {**o, "scheduling_strategy": "SPREAD"}
                                        for o in options])
        return Calls(self.watch, refs, pendings)

    def run(self, pending: PendingFunction[Any], options: dict[str, Any]) -> Any:
        """One call, waited for: over the call channel where the pool has one, else `ray.get`
        directly, in slices (the fastest path for the common case)."""
        channel = self.channel
        if channel is not None and channel.usable and not _holds_ray_handles(pending):
            try:
                [sent] = channel.call_many([self._channel_call(pending, options)])
            except ChannelError:
                pass  # gone for good since `usable` was asked: through Ray
            else:
                return self._wait_on_channel(sent, pending)
        ref = self.send(pending, options)
        watch = self.watch
        timeout = pending.function.options.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                left = WAIT_SLICE_S if deadline is None else min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic()))
                try:
                    return watch.get(ref, left)
                except GetTimeoutError:
                    watch.check_interrupt()
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
        except GetTimeoutError:
            cancel([ref], force=True)
            raise timeout_error(pending) from None
        except RayTaskError as error:
            raise original_exception(error) from None
        except PoolLostError:  # nothing left to cancel on
            raise
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): the task is not wanted any more
            cancel([ref])
            raise

    def _wait_on_channel(self, ref: ChannelRef, pending: PendingFunction[Any]) -> Any:
        """`run` over the head's call channel: the same waits in slices, timeout, cancel and errors."""
        watch = self.watch
        timeout = pending.function.options.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not ref.slot.wait(WAIT_SLICE_S if deadline is None else
                                    min(WAIT_SLICE_S, max(0.0, deadline - time.monotonic()))):
                watch.check_interrupt()
                if deadline is not None and time.monotonic() >= deadline:
                    ref.cancel(force=True)
                    raise timeout_error(pending)
        except (PoolLostError, FunctionTimeoutError):
            raise
        except BaseException:  # interrupted (Ctrl-C, SIGTERM): the task is not wanted any more
            ref.cancel()
            raise
        _, value, error = _channel_completion(Calls(watch, [ref], [pending]), 0, ref)
        if error is not None:
            raise error from None
        return value

    def run_many(self, pendings: list[PendingFunction[Any]], options: Sequence[dict[str, Any]]) -> list[Any]:
        """A group waited for here; a wait longer than a moment shows a live line on a terminal."""
        calls = self.send_group(pendings, options)
        # only on a terminal: the group path stays as lean as raw Ray's everywhere else
        progress = Progress(_group_label(pendings), len(pendings)) if console.interactive else None
        with Completions(calls, progress=progress) as completions:
            return completions.values()

    def run_on_nodes(self, pending: PendingFunction[Any], options: dict[str, Any], nodes: list[NodeInfo]) -> list[Any]:
        """Once on each node, pinned to it (hard affinity, no retry elsewhere); results in node order."""
        refs = self.send_all([pending] * len(nodes), [
            {**options, "max_retries": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node.ray_node_id,
                                                                                                 soft=False)}
            for node in nodes])

        def lost(index: int, error: BaseException) -> BaseException:
            node = nodes[index]
            return NodeLostError(
                f"node {node.index} ({node.instance_id}, {node.ip}) was lost during `{pending.function.__name__}(...) "
                f"@ pool`; the calls on the other nodes were cancelled. A call sent with @ is pinned to its node and "
                f"cannot move: send it again once the pool has replaced the node (pool.replaced). Cause: "
                f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            )

        with Completions(Calls(self.watch, refs, [pending] * len(refs), lost)) as completions:
            return completions.values()

    def submit(self, pending: PendingFunction[Any], options: dict[str, Any]) -> PoolFuture:
        """One call started now, as a future."""
        return PoolFuture(Calls(self.watch, self.send_all([pending], [options]), [pending]), None)

    def submit_many(self, pendings: list[PendingFunction[Any]], options: Sequence[dict[str, Any]],
                    as_tuple: bool) -> PoolFuture:
        """A group started now, as one future of its values in argument order."""
        return PoolFuture(self.send_group(pendings, options), tuple if as_tuple else list)

    def _channel_dropped(self) -> None:
        """The channel's connection dropped: ask at once whether the pool's head is gone (as a wait
        does after Ray Client's connection fails), so every wait raises the loss within a slice."""
        try:
            self.watch.raise_if_lost(ConnectionError("the pool's call channel dropped"))
        except BaseException:  # noqa: BLE001 - lost: the loss check interrupted every wait on the pool
            pass

    def before_disconnect(self) -> None:
        """Before this process leaves the pool's Ray cluster (see `watch.Deadlines.drop_all`)."""
        self._closing.set()
        opening, self._opening = self._opening, None
        if opening is not None:
            opening.join(timeout=60)  # it uses this process's Ray connection: done before that ends
        channel, self.channel = self.channel, None
        if channel is not None:
            channel.close()
        self._exported.clear()  # a later job on another cluster exports every function anew
        self.watch.before_disconnect()


def _channel_completion(calls: Calls, index: int, ref: ChannelRef) -> Completion:
    """Call `index`'s outcome over the channel as its caller gets it (the group waits and `>>` alike):
    its value, or its error translated as a Ray one would be; a channel gone for good is the pool's
    loss when the pool is lost (raised)."""
    value = ref.value_or_error()
    if not is_failure(value):
        return Completion(index, value, None)
    if isinstance(value, ConnectionError):
        calls.watch.raise_if_lost(value)
    return Completion(index, None, calls.translate(index, value))


def _holds_ray_handles(pending: PendingFunction[Any]) -> bool:
    """Whether a call's arguments hold Ray object refs or actor handles of this process's Ray
    connection: those mean something only to Ray Client, so such a call goes through it."""
    from ray.actor import ActorHandle

    return any(isinstance(value, (ray.ObjectRef, ActorHandle)) or type(value).__module__.startswith("ray.util.client")
               for value in (*pending.args, *pending.kwargs.values()))


def _group_label(pendings: list[PendingFunction[Any]]) -> str:
    names = {p.function.__name__ for p in pendings}
    return f"{names.pop()} ×{len(pendings)}" if len(names) == 1 else f"group of {len(pendings)}"
