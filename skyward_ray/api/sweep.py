"""Sweeps: many independent calls whose results matter as they come, not all at the end.

A hyperparameter sweep is `pool.map` with three differences that matter to the person waiting:

- results arrive in completion order (`pool.as_completed(fn, configs)`), so the best trial so far
  is known long before the slowest one ends;
- a failed trial is a result, not the end of the sweep (`return_exceptions=True`): one diverging
  learning rate must not cancel a hundred good trials, unlike a group, whose first failure
  cancels the rest;
- a long sweep shows its progress (done, running, failed, elapsed, ETA) on a terminal.

`Sweep` adds the bookkeeping (best so far, failures) on top of `as_completed`. Ray does the work:
every call is one Ray task, spread over the pool, retried by Ray on node loss.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from skyward_ray.api.dispatch import POLL_S, Completions, Dispatcher
from skyward_ray.api.function import PendingFunction, RemoteFunction, not_pending_message
from skyward_ray.api.progress import Progress


@dataclass(frozen=True)
class Trial:
    """One finished call of a sweep: the item it was made with and its value or its error."""

    index: int
    item: Any
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def as_completed(dispatcher: Dispatcher, pendings: Sequence[PendingFunction[Any]],
                 options: Sequence[dict[str, Any]], items: Sequence[Any], return_exceptions: bool = False,
                 poll: float = POLL_S) -> Iterator[Trial]:
    """Submit every call now (spread over the pool); yield each `Trial` as it finishes.

    The wait is the pool's one `Completions` (deadlines, interrupts, the pool's loss, cancel), as a
    group's. Without `return_exceptions` the first failure is raised (the rest are cancelled), as a
    group does; with it, failures (timeouts too) are yielded as trials with `error` set and the
    sweep goes on. Leaving the loop early (break, an exception, Ctrl-C) cancels the calls that
    have not finished.
    """
    started = time.monotonic()
    calls = dispatcher.send_group(list(pendings), options)
    with Completions(calls, return_exceptions=return_exceptions, poll=poll) as completions:
        for index, value, error in completions:
            yield Trial(index, items[index], value, error, time.monotonic() - started)


def score_function(score: str | Callable[[Any], float] | None) -> Callable[[Any], float]:
    if score is None:
        return float
    if isinstance(score, str):
        return lambda value: float(value[score])
    return score


@dataclass
class Sweep:
    """A sweep in progress: iterate it for trials as they finish; `best`, `failed`, `trials` at any time.

        sweep = pool.sweep(train, configs, score="accuracy", mode="max")
        for trial in sweep:           # as each trial finishes
            print(trial.item, trial.value, "best so far:", sweep.best.item)

    `score` is a key of a dict result, a function of the result, or None for a result that is a
    number. Failed trials never stop the sweep; they are in `failed` with their error.
    """

    trials_iter: Iterator[Trial]
    total: int
    score: Callable[[Any], float]
    mode: Literal["max", "min"] = "max"
    show_progress: bool | None = None  # None: on a terminal
    trials: list[Trial] = field(default_factory=list)
    failed: list[Trial] = field(default_factory=list)
    best: Trial | None = None
    started: float = field(default_factory=time.monotonic)

    def __iter__(self) -> Iterator[Trial]:
        progress = Progress("sweep", self.total, enabled=self.show_progress)
        progress.started = self.started
        try:
            for trial in self.trials_iter:
                self._record(trial)
                best = None if self.best is None else f"{self.score(self.best.value):.4g} ({self.best.item!r:.40})"
                progress.update(done=self.done, failed=len(self.failed), best=best)
                yield trial
        finally:
            progress.stop()

    def run(self) -> "Sweep":
        """Wait for every trial; returns self (for `pool.sweep(...).run().best`)."""
        for _ in self:
            pass
        return self

    def _record(self, trial: Trial) -> None:
        if not trial.ok:
            self.failed.append(trial)
            self.trials.append(trial)
            return
        self.trials.append(trial)
        value = self.score(trial.value)
        if math.isnan(value):
            return
        if self.best is None or (value > self.score(self.best.value) if self.mode == "max"
                                 else value < self.score(self.best.value)):
            self.best = trial

    @property
    def done(self) -> int:
        return len(self.trials)

    def eta_seconds(self) -> float | None:
        """Time left at the rate so far (None before the first trial ends)."""
        if not self.trials or self.done >= self.total:
            return None if not self.trials else 0.0
        elapsed = time.monotonic() - self.started
        return elapsed / self.done * (self.total - self.done)


def check_function(fn: Any, where: str) -> RemoteFunction[Any, Any]:
    if not isinstance(fn, RemoteFunction):
        raise TypeError(not_pending_message(fn, where) if callable(fn) else
                        f"{where} takes a @sky.function, got {type(fn).__name__}")
    return fn


def items_list(items: Iterable[Any]) -> list[Any]:
    return items if isinstance(items, list) else list(items)

