"""What every wait on one pool shares: its interruption, its loss check and its deadlines.

Why an object a pool owns rather than module state: two pools of one process (one closed, one
open; a `sky.Compute` and a `sky.attach` handle) must not see each other's loss, and a pool's
pending deadlines hold that pool's Ray objects, which must all be let go before that pool's Ray
connection ends (`PoolWatch.before_disconnect`), and only those.

`ray.get` waits in C++ and runs no signal handler meanwhile: waits are cut into slices of
`WAIT_SLICE_S`, and each slice asks `check_interrupt`, so the loss of the pool's head (or a signal)
reaches the caller within one slice.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, LocalRayletDiedError, RaySystemError, RayTaskError, TaskCancelledError

WAIT_SLICE_S = 1.0
# Only errors that say this driver lost its cluster (not a task's own failure) ask the loss check.
CLUSTER_GONE_ERRORS = (LocalRayletDiedError, RaySystemError, ConnectionError)


class Deadlines:
    """One daemon thread for every pending deadline of one pool (`timeout=`, a forced cancel),
    however many futures wait. The thread starts with the first deadline and ends at
    `drop_all`: a closed pool keeps no thread."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._expiring = threading.Lock()  # held while an expiry runs: `drop_all` waits for it
        self._thread: threading.Thread | None = None
        self._ending = False

    def add(self, deadline: float, expire: Callable[[], None]) -> None:
        """Run `expire` (in the deadline thread) at `deadline` (time.monotonic), unless dropped first."""
        with self._wake:
            heapq.heappush(self._heap, (deadline, next(self._order), expire))
            self._ending = False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="skyward-deadlines", daemon=True)
                self._thread.start()
            self._wake.notify()

    def drop_all(self) -> None:
        """Forget every pending deadline, in the caller's thread, before the pool's Ray goes away.

        A deadline holds its future and its Ray object refs, and may cancel tasks when it expires
        (a failed group's forced cancel, 2 s later). Had that cancel, or the last of those refs,
        reached Ray on the daemon thread while or after this process left the cluster, Ray's
        core worker would end the whole process ("The core worker has already been shutdown ...
        The process will exit"): seen as a test worker dying right after a pool closed.
        """
        with self._wake:
            dropped, self._heap = self._heap, []
            self._ending = True
            self._wake.notify()
        with self._expiring:  # an expiry already running (a cancel) finishes while Ray is still up
            dropped.clear()

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._heap or self._heap[0][0] > time.monotonic():
                    if not self._heap and self._ending:
                        self._thread = None  # the next `add` starts a fresh thread
                        return
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


class PoolWatch:
    """One pool's interruption (set when its head is lost: every wait on it raises that error
    within a slice), its loss check (asked when a wait fails with a system error: is the head
    gone? the pool's replacer notices too, but seconds later), and its deadlines."""

    def __init__(self) -> None:
        self.deadlines = Deadlines()
        self._interrupt: BaseException | None = None
        self._loss_check: Callable[[], BaseException | None] | None = None

    def set_loss_check(self, loss_check: Callable[[], BaseException | None] | None) -> None:
        """What a wait asks after a system error: the pool's loss, or None (not lost, or unknown)."""
        self._loss_check = loss_check

    def interrupt_waits(self, error: BaseException | None) -> None:
        """Make every wait on this pool raise `error` within one slice (None: stop doing so)."""
        self._interrupt = error

    def check_interrupt(self) -> None:
        """Between two slices of a wait: raise the pool's loss, if it was lost."""
        if self._interrupt is not None:
            raise self._interrupt

    def raise_if_lost(self, error: BaseException) -> None:
        """After a wait failed with `error`: raise the pool's loss from it when the pool is lost."""
        lost = self._interrupt
        if lost is None and self._loss_check is not None and isinstance(error, CLUSTER_GONE_ERRORS):
            try:
                lost = self._loss_check()
            except Exception:
                lost = None
        if lost is not None:
            raise lost from error

    def get(self, refs: Any, timeout: float | None) -> Any:
        """`ray.get`; an exception a signal handler raised inside Ray's C++ wait comes out as itself
        (Ray reports it as a SystemError when the wait also timed out), and any failure once the
        pool is lost (Ray Client's connection to a lost head, say) is the pool's loss."""
        try:
            return ray.get(refs, timeout=timeout)
        except SystemError as error:
            if error.__cause__ is not None and "with an exception set" in str(error):
                raise error.__cause__ from None
            raise
        except (GetTimeoutError, RayTaskError, TaskCancelledError):
            raise
        except Exception as error:
            self.raise_if_lost(error)
            raise

    def before_disconnect(self) -> None:
        """What a pool does before this process leaves its Ray cluster: no Ray object of it may be
        released by a background thread afterwards (see `Deadlines.drop_all`)."""
        self.deadlines.drop_all()
