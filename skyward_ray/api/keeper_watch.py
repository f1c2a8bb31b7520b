"""An attached process's watch on the detached pool it joined: has the pool's keeper ended it?

A detached pool ends without asking the processes attached to it: `skyward-ray down` from another
shell, its idle timeout (no task running), its max lifetime. An attached process is a Ray driver
with no machines of its own to watch, and Ray does not tell it: a wait on a cluster whose head
has gone just goes on, until Ray's core worker gives up on the GCS and ends the whole process
minutes later (seen: a call sent after `down` waited past 170 s). The keeper's record says it at
once: it marks the pool "ending" before it tears the pool down, removes the record at the end,
and a keeper that died leaves a record whose owner is gone. Whether the record still says the pool
is usable is `detached.ready_record`'s question, asked here once a second.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from skyward_ray.errors import PoolClosedError

POLL_S = 1.0  # a read of one small local file


class KeeperWatch:
    """Calls `on_end(error)` once, from its own thread, when `check()` first raises `PoolClosedError`."""

    def __init__(self, name: str, check: Callable[[], object], on_end: Callable[[PoolClosedError], None]) -> None:
        self._check = check
        self._on_end = on_end
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"skyward-keeper-watch-{name}", daemon=True)
        self.ended: PoolClosedError | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._check()
            except PoolClosedError as error:
                self.ended = error
                self._on_end(error)
                return
