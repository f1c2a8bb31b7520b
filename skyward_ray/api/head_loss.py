"""The loss of a pool's head, found by whichever notices first, and delivered to the user's code.

A pool cannot go on without its head (a spot reclaim, a host failure). Two things notice:

- a wait of the user's that fails with a system error asks `check_now` (the pool's loss check):
  the head's machine listed as ended within `HEAD_CHECK_S` means the pool is lost, and that wait
  raises `PoolLostError` itself;
- the pool's replacer, from its thread, calls `on_head_lost`: the error reaches the main thread
  through the pool's own signal handler (it also wakes a wait blocked on a lock), or, where no
  handler of ours is in place, the pool is ended from that thread. It does so at once, from the
  tunnel's thread, when the head's SSH host key changed on a reconnect: that is no machine failure
  but a security event, raised as `HostKeyChangedError` (a `PoolLostError`) saying what to check.

Either way every wait on the pool raises the loss within one slice (`PoolWatch.interrupt_waits`),
and the cluster is marked lost (teardown then ends the machines before disconnecting).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from skyward_ray.api.pool_signals import PoolSignals
from skyward_ray.api.watch import PoolWatch
from skyward_ray.cluster.running import Cluster
from skyward_ray.cluster.ssh_tunnel import HostKeyMismatchError
from skyward_ray.errors import HostKeyChangedError, PoolLostError

HEAD_CHECK_S = 5.0  # after a wait's system error, how long the head's machine may take to list as ended


class HeadLoss:
    """Whether one pool's head is gone (`error`), and what to do when it goes."""

    def __init__(self, cluster: Callable[[], Cluster | None], watch: PoolWatch, signals: PoolSignals,
                 end_pool: Callable[[BaseException], None]) -> None:
        self._cluster = cluster
        self._watch = watch
        self._signals = signals
        self._end_pool = end_pool
        self.error: PoolLostError | None = None

    def check_now(self) -> PoolLostError | None:
        """Asked by a wait that failed with a system error: is the head gone? (then the pool is lost)"""
        cluster = self._cluster()
        if self.error is None and cluster is not None and cluster.nodes:
            head = cluster.nodes[0].instance_id
            deadline = time.monotonic() + HEAD_CHECK_S  # a machine being ended may still list for a moment
            while not cluster.provider.is_terminated(head):
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.5)
            self.mark(head)
            self._signals.signalled = self._signals.signalled or -1  # raised by the wait itself: no signal needed
        return self.error

    def on_head_lost(self, head_id: str, cause: BaseException | None = None) -> None:
        """From the replacer's (or the tunnel's) thread: the head is gone, or `cause` cut it off.
        Raise `PoolLostError` in the user's code (the main thread, through this pool's own signal
        handler), which unwinds `with` and ends every machine left; where no handler of ours is in
        place, end the pool from here."""
        if self.error is not None:
            return  # a wait found it first, and raised it
        error = self.mark(head_id, cause)
        if not self._signals.raise_in_main():
            self._end_pool(error)

    def mark(self, head_id: str, cause: BaseException | None = None) -> PoolLostError:
        """The pool is lost: every wait on it raises the loss from now on."""
        cluster = self._cluster()
        name = cluster.name if cluster else "?"
        if isinstance(cause, HostKeyMismatchError):
            self.error = HostKeyChangedError(
                f"the SSH host key of {cause.endpoint or 'the head'} (the head of pool {name}, {head_id}) changed"
                " when the tunnel reconnected: the server there is not the head this pool started, so the pool's"
                " connection was cut for safety (nothing more was sent to it) and every machine left is ended."
                " Check whether that address still belongs to the pool's head in the cloud's console (an address"
                " reassigned after a stop, or a machine-in-the-middle on the path), and whether anyone could"
                " have changed the head's /etc/ssh keys. Open a new pool to go on.\n"
                f"ssh said: {cause}")
            self.error.__cause__ = cause
        else:
            self.error = PoolLostError(
                f"the head node of pool {name} ({head_id}) was lost (a spot reclaim or a host failure); a pool"
                " cannot go on without its head, so every machine left is ended. Open a new pool to go on"
                " (an on-demand head avoids spot reclaims of the head).")
        if cluster is not None:
            cluster.lost = True
        self._watch.interrupt_waits(self.error)
        return self.error
