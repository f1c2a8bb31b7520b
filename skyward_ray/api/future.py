"""`pending > pool`: a call or a group started now, as a real `concurrent.futures.Future`.

No thread waits for it: Ray's own completion callbacks resolve it, and the pool's one deadline
thread times it out. It shares `calls.Calls` with the waits of `dispatch.Completions` (the same
translation of errors, timeouts and cancel), so a future fails as a waited group would.
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time
from collections.abc import Callable
from typing import Any

import ray

from skyward_ray.api.calls import Calls, cancel, is_failure
from skyward_ray.api.channel_client import ChannelRef


class PoolFuture(concurrent.futures.Future):  # type: ignore[type-arg]
    """The result of a call or a group sent to a pool, as a `concurrent.futures.Future`.

    It is resolved by Ray's completion callbacks, so no thread waits for it; `wait` and
    `as_completed` work on it. `cancel()` cancels the Ray tasks and returns True until a result
    is in. The first failure of a group cancels the rest and is the future's exception.
    """

    def __init__(self, calls: Calls, shape: Callable[[list[Any]], Any] | None) -> None:
        super().__init__()
        self._calls = calls
        self._shape = shape
        self._values: list[Any] = [None] * len(calls.refs)
        self._finished: set[int] = set()  # indexes whose task has ended (any outcome)
        self._left = len(calls.refs)
        self._settled = False
        self._guard = threading.Lock()
        started = time.monotonic()
        for index, deadline in calls.deadlines(started).items():
            calls.watch.deadlines.add(deadline, lambda i=index: self._expired(i))
        for index, ref in enumerate(calls.refs):
            done = functools.partial(self._one_done, index)
            if isinstance(ref, ChannelRef):
                ref.on_completed(done)  # the call channel's outcome, pushed by the head
            else:  # Ray's own completion hook (what ObjectRef.future() is built on), without a Future per call
                ref._on_completed(done)

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
        if is_failure(value):
            self._fail(self._calls.translate(index, value))
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

    def _running(self) -> list[ray.ObjectRef]:
        with self._guard:
            return [ref for i, ref in enumerate(self._calls.refs) if i not in self._finished]

    def _fail(self, error: BaseException) -> None:
        if not self._settle():
            return
        self._calls.stop(self._running)
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
            self.set_exception(self._calls.timeout_error(index))
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile
        cancel([self._calls.refs[index]], force=True)
        self._calls.stop(self._running)

    def cancel(self) -> bool:
        if not self._settle():
            return super().cancel()  # already resolved: False, as concurrent.futures says
        self._calls.stop(self._running)
        return super().cancel()
