"""The signals that end a pool, and holding them while a teardown runs.

One list for everyone: `sky.Compute` installs its handlers for these, the launcher and the
teardown hold them, and Ray's own handler is replaced again after Ray touched it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

# Ctrl-C, `kill`, and a closed terminal: each ends the pool (and never half-way).
HANDLED_SIGNALS: tuple[int, ...] = tuple(
    s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s is not None)


@contextlib.contextmanager
def signals_held() -> Iterator[list[int]]:
    """While teardown runs, SIGINT/SIGTERM/SIGHUP are noted (in the yielded list), not obeyed: a
    second Ctrl-C or SIGTERM must not abort the teardown the first one started. Main thread only
    (elsewhere signals do not interrupt anyway)."""
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    previous = {}
    for sig in HANDLED_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)


def as_exit(signum: int) -> BaseException:
    """The exception a held signal turns into once the teardown it waited for is done."""
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def reassert_signal_handlers() -> None:
    """Install Python's handlers again at the OS level, after `ray.shutdown`. Python reports its own
    handler whatever the OS has: should Ray's core worker have put back what it found at `ray.init`
    (the default, which kills; see `driver._FAILURE_HANDLER_SWITCH` for how a direct driver avoids
    that), a SIGTERM would end the process mid-teardown."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in HANDLED_SIGNALS:
        with contextlib.suppress(ValueError, OSError, TypeError):
            handler = signal.getsignal(sig)
            if handler is not None:
                signal.signal(sig, handler)
