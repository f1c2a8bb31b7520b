"""A pool's signal handlers: SIGTERM and SIGHUP (and Ctrl-C) unwind through `with` like an exception.

Why: a pool left by a signal must still be torn down, and Python's default for SIGTERM/SIGHUP
ends the process without running `__exit__`. The first signal raises (`SystemExit(128 + n)`, or
`KeyboardInterrupt`); later ones, while that unwinding and its teardown run, are ignored so they
cannot abort it. The user's own choices stay: an ignored signal (nohup) stays ignored, a Ctrl-C
handler of theirs stays theirs. The same handlers carry the loss of the pool's head from the
replacer's thread into the main thread (`raise_in_main`): a real signal also wakes a wait
blocked on a lock (Ray Client), which an exception set from another thread would not.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

from skyward_ray.cluster.signals import HANDLED_SIGNALS


class PoolSignals:
    """One pool's handlers for `HANDLED_SIGNALS`. `closing()` says the pool's teardown is running
    (signals are ignored then); `lost()` is the pool's loss, raised instead of the signal's own
    exception when set."""

    def __init__(self, closing: Callable[[], bool], lost: Callable[[], BaseException | None]) -> None:
        self._closing = closing
        self._lost = lost
        self._previous: dict[int, Any] = {}
        self.signalled: int | None = None  # the first signal that is ending the pool (-1: its loss, raised by a wait)

    def install(self) -> None:
        """Put this pool's handler in place (again: `ray.init` puts its own SIGTERM handler in place of ours)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in HANDLED_SIGNALS:
            previous = signal.getsignal(sig)
            if previous == signal.SIG_IGN and sig not in self._previous:
                continue  # the user ignores this signal on purpose (e.g. nohup): leave it so
            if sig == signal.SIGINT and previous not in (signal.default_int_handler, self._on_signal):
                continue  # the user handles Ctrl-C: theirs stays
            self._previous.setdefault(sig, previous)  # keep the user's, not Ray's, to restore
            signal.signal(sig, self._on_signal)

    def restore(self) -> None:
        """Put back the handlers found before `install` (where ours is still the one in place)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in list(self._previous.items()):
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._previous.clear()

    def raise_in_main(self) -> bool:
        """Send the main thread one of the signals our handler holds (it raises the pool's loss
        there); False when no handler of ours is in place."""
        # SIGTERM and SIGHUP before SIGINT, the order this always took: any of ours raises the loss
        for sig in sorted(HANDLED_SIGNALS, key=lambda s: s == signal.SIGINT):
            if signal.getsignal(sig) == self._on_signal:
                signal.pthread_kill(threading.main_thread().ident or 0, sig)
                return True
        return False

    def _on_signal(self, signum: int, frame: Any) -> None:
        """The first signal unwinds through `with` (SystemExit, or KeyboardInterrupt for SIGINT);
        more signals while that unwinding and its teardown run are ignored, so they cannot abort it."""
        if self.signalled is not None or self._closing():
            return
        self.signalled = signum
        lost = self._lost()
        if lost is not None:
            raise lost
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)
