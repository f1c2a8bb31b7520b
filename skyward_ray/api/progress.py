"""A live progress line for long groups, maps and sweeps: done, in flight, failed, elapsed, ETA.

Shown only on a terminal (stderr, through the one console) and only once a wait has lasted
`SHOW_AFTER_S`: a group that ends in a second never flickers a display. `SKYWARD_QUIET=1` or a
non-terminal stderr (CI logs, notebooks' captured output) shows nothing.
"""

from __future__ import annotations

import time
from typing import Any

from skyward_ray.console import console

SHOW_AFTER_S = 2.0


def _seconds(value: float | None) -> str:
    if value is None:
        return "—"
    minutes, seconds = divmod(int(value + 0.5), 60)
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class Progress:
    """Counts for one group; `update()` as calls finish, `stop()` at the end (idempotent)."""

    def __init__(self, label: str, total: int, enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.failed = 0
        self.best: str | None = None
        self.started = time.monotonic()
        self.enabled = console.interactive if enabled is None else enabled
        self._live: Any = None

    def eta_seconds(self) -> float | None:
        """Time left at the rate so far (None before the first call ends)."""
        if not self.done:
            return None
        return (time.monotonic() - self.started) / self.done * max(self.total - self.done, 0)

    def line(self) -> str:
        parts = [f"{self.label}: {self.done}/{self.total} done", f"{self.total - self.done} in flight",
                 f"{self.failed} failed"]
        if self.best is not None:
            parts.append(f"best {self.best}")
        parts += [f"{_seconds(time.monotonic() - self.started)} elapsed", f"ETA {_seconds(self.eta_seconds())}"]
        return " · ".join(parts)

    def update(self, done: int | None = None, failed: int | None = None, best: str | None = None) -> None:
        if done is not None:
            self.done = done
        if failed is not None:
            self.failed = failed
        if best is not None:
            self.best = best
        if not self.enabled:
            return
        if self._live is None:
            if time.monotonic() - self.started < SHOW_AFTER_S:
                return
            self._live = console.live(self.line())
        else:
            self._live.update(self.line())

    def stop(self) -> None:
        if self._live is not None:
            self._live.update(self.line())
            self._live.stop()
            self._live = None
