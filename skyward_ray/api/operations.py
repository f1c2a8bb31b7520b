"""What every pool object does with the operators: `>>`, `@`, `&`/`gather`, `>`, `map`, sweeps.

Shared by `sky.Compute` (a pool this process launched and owns) and `sky.attach` (a detached pool
a keeper owns, that this process only joins): the operators need only that the pool be open
(`ensure_open`), the offer it was bought from (a call asks for the offer's accelerators), and its
nodes. Each pool owns one `dispatch.Dispatcher` (its waits' interruption, loss check and
deadlines, and the modules it ships): how a call becomes a Ray task is `skyward_ray.api.dispatch`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from skyward_ray.api import sweep as sweeps
from skyward_ray.api.dispatch import Dispatcher
from skyward_ray.api.function import PendingFunction, RemoteFunction, not_pending_message
from skyward_ray.api.future import PoolFuture
from skyward_ray.errors import SpecError
from skyward_ray.planning.nodes import NodeInfo
from skyward_ray.planning.offers import Offer


class PoolOperations:
    """The operators' side of a pool (it satisfies `function.Pool`). A subclass says whether it
    is open (`ensure_open`), its `offer` and its `nodes`."""

    def __init__(self) -> None:
        self.dispatcher = Dispatcher()

    def ensure_open(self) -> None:
        """Raise (`PoolClosedError`, `PoolLostError`) unless work can be sent now; connect if needed."""
        raise NotImplementedError

    @property
    def offer(self) -> Offer:
        raise NotImplementedError

    @property
    def nodes(self) -> list[NodeInfo]:
        raise NotImplementedError

    def _task_options(self, pending: PendingFunction[Any]) -> dict[str, Any]:
        offer = self.offer
        if offer.accelerator and offer.count and pending.function.uses_default_accelerators():
            return {"num_gpus": offer.count}
        return {}

    def run_one(self, pending: PendingFunction[Any]) -> Any:
        self.ensure_open()
        return self.dispatcher.run(pending, self._task_options(pending))

    def run_group(self, pendings: list[PendingFunction[Any]]) -> list[Any]:
        self.ensure_open()
        return self.dispatcher.run_many(pendings, [self._task_options(p) for p in pendings])

    def run_on_every_node(self, pending: PendingFunction[Any]) -> list[Any]:
        nodes = self.nodes
        return self.dispatcher.run_on_nodes(pending, self._task_options(pending), nodes)

    def submit(self, pending: PendingFunction[Any]) -> PoolFuture:
        self.ensure_open()
        return self.dispatcher.submit(pending, self._task_options(pending))

    def submit_group(self, pendings: list[PendingFunction[Any]], as_tuple: bool) -> PoolFuture:
        self.ensure_open()
        return self.dispatcher.submit_many(pendings, [self._task_options(p) for p in pendings], as_tuple)

    def map(self, fn: RemoteFunction[Any, Any], items: Iterable[Any], *, return_exceptions: bool = False) -> list[Any]:
        """One task per item, run in parallel; results in input order. With `return_exceptions`,
        a failed call's exception takes its place in the list and the others run on (a sweep);
        without it, the first failure cancels the rest and is raised (a group)."""
        fn = sweeps.check_function(fn, "pool.map")
        if not return_exceptions:
            return self.run_group([fn(item) for item in items])
        trials = sorted(self.as_completed(fn, items, return_exceptions=True), key=lambda t: t.index)
        return [t.value if t.ok else t.error for t in trials]

    def as_completed(self, fn: RemoteFunction[Any, Any], items: Iterable[Any], *,
                     return_exceptions: bool = False) -> Iterator[sweeps.Trial]:
        """One task per item, all sent now; yields a `Trial` (index, item, value or error) as each
        finishes. Leaving the loop early cancels the calls still running."""
        fn = sweeps.check_function(fn, "pool.as_completed")
        item_list = sweeps.items_list(items)
        pendings = [fn(item) for item in item_list]
        self.ensure_open()
        return sweeps.as_completed(self.dispatcher, pendings, [self._task_options(p) for p in pendings], item_list,
                                   return_exceptions)

    def sweep(self, fn: RemoteFunction[Any, Any], configs: Iterable[Any], *,
              score: str | Callable[[Any], float] | None = None, mode: Literal["max", "min"] = "max",
              progress: bool | None = None) -> sweeps.Sweep:
        """A hyperparameter sweep: `fn(config)` for every config, failures kept, the best so far
        tracked by `score` (a result key, a function, or None for numeric results). Iterate it
        for trials as they finish, or `.run()` it. `progress` (default: on a terminal) shows a
        live line with done, running, failed, best, elapsed and ETA."""
        if mode not in ("max", "min"):
            raise SpecError(f"mode={mode!r}: use 'max' (higher score is better) or 'min' (lower is better)")
        config_list = sweeps.items_list(configs)
        trials = self.as_completed(fn, config_list, return_exceptions=True)
        return sweeps.Sweep(trials, len(config_list), sweeps.score_function(score), mode, progress)

    # Plain values or undecorated functions on the left of an operator land here.
    def __rrshift__(self, other: object) -> Any:
        raise TypeError(not_pending_message(other, ">>"))

    def __rmatmul__(self, other: object) -> Any:
        raise TypeError(not_pending_message(other, "@"))

    def __lt__(self, other: object) -> Any:  # `value > pool` falls back to `pool < value`
        raise TypeError(not_pending_message(other, ">"))
