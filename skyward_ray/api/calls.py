"""Calls sent to a pool together, and what their outcomes mean to the caller.

One state object for every way of waiting (`dispatch.Completions` iterates it, `future.PoolFuture`
is resolved from it by Ray's callbacks), so a group, a future, a map and a sweep translate errors,
time out, and cancel the same way:

- a remote exception is re-raised as its original type, with the remote traceback as a note;
- a call past its `timeout=` is cancelled and fails with `FunctionTimeoutError`;
- a system error of a pinned call (`@`) is its node's loss (`lost`, e.g. `NodeLostError`);
- stopping cancels what has not finished, and ends the workers still running it
  `FORCE_CANCEL_AFTER_S` later (a task stuck in one long C call ignores the interrupt).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import ray
from ray.exceptions import RayError, RayTaskError, TaskCancelledError

from skyward_ray.api.channel_client import ChannelRef, ChannelTaskError
from skyward_ray.api.function import PendingFunction
from skyward_ray.api.watch import PoolWatch
from skyward_ray.errors import FunctionTimeoutError

FORCE_CANCEL_AFTER_S = 2.0

#: what a pinned call's system error becomes: (index of the call, the error) -> the caller's error
LostTranslation = Callable[[int, BaseException], BaseException]


def original_exception(error: BaseException) -> BaseException:
    """The user's own exception out of Ray's wrapper, with the remote traceback as a note (plain
    text: without the terminal colour codes and the frames of Ray, cloudpickle and skyward's own
    wrapper, which say nothing about the user's code)."""
    if isinstance(error, RayTaskError):
        cause = error.cause
        if isinstance(cause, BaseException) and not isinstance(cause, RayTaskError):
            return with_remote_traceback(cause, str(error))
    return error


def with_remote_traceback(cause: BaseException, text: str) -> BaseException:
    """`cause` (the user's exception) with the remote traceback `text` (Ray's) as a note."""
    cause.add_note(f"Raised on the remote node; its traceback:\n{remote_traceback(text)}")
    return cause


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FRAME = re.compile(r'\s*File "(?P<path>[^"]*)", line \d+')
#: frames from these places are the machinery between the call and the user's code
_MACHINERY = (f"{os.sep}ray{os.sep}", "cloudpickle", f"skyward_ray{os.sep}api{os.sep}attempts.py")


def remote_traceback(text: str) -> str:
    """A remote traceback as the user should read it: no ANSI codes, no machinery frames."""
    lines = _ANSI.sub("", text).splitlines()
    kept: list[str] = []
    skipping = False
    for line in lines:
        frame = _FRAME.match(line)
        if frame:
            skipping = any(part in frame.group("path") for part in _MACHINERY)
        elif skipping and not line.startswith("    "):
            skipping = False  # the frame's source lines are indented deeper than the next header
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def timeout_error(pending: PendingFunction[Any]) -> FunctionTimeoutError:
    """What a call that ran past its `timeout=` fails with."""
    return FunctionTimeoutError(
        f"{pending.function.__name__} ran longer than its timeout={pending.function.options.timeout:g}s "
        "and was cancelled; raise timeout= in @sky.function(...) if it needs longer"
    )


def cancel(refs: Sequence[ray.ObjectRef | ChannelRef], force: bool = False) -> None:
    """Cancel Ray tasks (sent through Ray, or over the call channel); finished ones and a pool going
    away are no error."""
    ray_refs = []
    for ref in refs:
        if isinstance(ref, ChannelRef):
            ref.cancel(force)
        else:
            ray_refs.append(ref)
    if not ray_refs or not ray.is_initialized():
        return  # the pool is gone (and Ray would start a fresh local cluster to serve the call)
    for ref in ray_refs:
        try:
            ray.cancel(ref, force=force)
        except Exception:  # already finished, or the pool is going away
            pass


def is_failure(value: Any) -> bool:
    """Whether a completion carries a failure rather than a result. A task may return an exception
    object as its value (a sweep collecting errors): only Ray's errors, and Ray Client's transport
    errors, are failures."""
    return isinstance(value, (RayError, ConnectionError)) or (
        isinstance(value, BaseException) and type(value).__module__.startswith("grpc"))


class Calls:
    """Calls sent together: their refs (in argument order: Ray's, or the call channel's
    `ChannelRef`s, never both), what they were, and the pool's watch."""

    __slots__ = ("watch", "refs", "pendings", "lost")

    def __init__(self, watch: PoolWatch, refs: list[ray.ObjectRef], pendings: list[PendingFunction[Any]],
                 lost: LostTranslation | None = None) -> None:
        self.watch = watch
        self.refs = refs
        self.pendings = pendings
        self.lost = lost

    def translate(self, index: int, error: BaseException) -> BaseException:
        """What the caller gets for call `index` ending in `error` (a Ray error, or a transport one)."""
        if isinstance(error, RayTaskError):
            return original_exception(error)
        if isinstance(error, ChannelTaskError):
            return with_remote_traceback(error.cause, error.text) if error.text else error.cause
        if isinstance(error, RayError) and not isinstance(error, TaskCancelledError) and self.lost is not None:
            return self.lost(index, error)
        return error

    def timeout_error(self, index: int) -> FunctionTimeoutError:
        return timeout_error(self.pendings[index])

    def deadlines(self, started: float) -> dict[int, float]:
        """When each call with a `timeout=` is due, counted from `started` (time.monotonic)."""
        return {i: started + p.function.options.timeout for i, p in enumerate(self.pendings)
                if p.function.options.timeout is not None}

    def stop(self, unfinished: Callable[[], Sequence[ray.ObjectRef]]) -> None:
        """Interrupt the calls not finished (KeyboardInterrupt in Python code) now, and end the
        workers of those still running `FORCE_CANCEL_AFTER_S` later (a long call into C never
        sees the interrupt)."""
        cancel(unfinished())
        self.watch.deadlines.add(time.monotonic() + FORCE_CANCEL_AFTER_S, lambda: cancel(unfinished(), force=True))
