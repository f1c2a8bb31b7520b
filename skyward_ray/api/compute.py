"""`sky.Compute`: a pool that exists only inside its `with` block.

Entering selects an offer (`sky.plan`), provisions through the provider's Ray `NodeProvider`,
boots Ray, and connects this process as the driver. Leaving, for any reason (normal exit, an
exception, KeyboardInterrupt, SIGTERM/SIGHUP, interpreter exit), terminates every node and waits
until the provider lists none. Work is sent with the operators of `PendingFunction`; see
`skyward_ray.api.dispatch` for how a call becomes a Ray task.

This module is the pool's lifecycle and its facts; the parts it runs each have their own:
checking the arguments (`request`), walking the plan (`plan_walk`), the code the job ships
(`staging`), the signal handlers (`pool_signals`) and the head's loss (`head_loss`). A detached
pool's keeper makes its pool with `Compute.for_keeper(KeeperMode(...), ...)`.
"""

from __future__ import annotations

import atexit
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import ray

from skyward_ray.api import detached
from skyward_ray.api.channel_client import CallChannel
from skyward_ray.api.head_loss import HeadLoss
from skyward_ray.api.operations import PoolOperations
from skyward_ray.api.plan_walk import launch_from_plan
from skyward_ray.api.pool_signals import PoolSignals
from skyward_ray.api.request import KeeperMode, PoolRequest
from skyward_ray.api.staging import StagedCode, job_runtime_env
from skyward_ray.cluster import api_log
from skyward_ray.cluster.billing import Ledger
from skyward_ray.cluster.dashboard import Dashboard, open_dashboard, write_token
from skyward_ray.cluster.dashboard import token_path as dashboard_token_path
from skyward_ray.cluster.elastic import ElasticScaler
from skyward_ray.cluster.replacer import NodeReplacer
from skyward_ray.cluster.running import Cluster
from skyward_ray.cluster.signals import as_exit, signals_held
from skyward_ray.cluster.teardown import teardown, teardown_beside
from skyward_ray.console import console
from skyward_ray.errors import PoolClosedError, SpecError
from skyward_ray.planning.accelerators import Accelerator
from skyward_ray.planning.image import Image
from skyward_ray.planning.nodes import NodeInfo, Nodes
from skyward_ray.planning.offers import Offer, Plan
from skyward_ray.planning.providers import ProviderConfig
from skyward_ray.planning.spec import Allocation, Spec

_OPEN_POOLS: "weakref.WeakSet[Compute]" = weakref.WeakSet()


class Compute(PoolOperations):
    """A pool of nodes, provisioned on entry and gone on exit.

    >>> with sky.Compute(nodes=3) as pool:          # provider omitted: sky.Local()
    ...     square(7) >> pool

    Every argument is checked here, before anything is planned, printed or started (`SpecError`
    naming the field and the fix; `ProviderUnavailableError` for a cloud whose SDK is missing).

    Args:
        *specs: `sky.Spec(...)` choices to compare, cheapest first, falling back in price order;
            or none, and the keywords below describe one spec per provider (never both).
        provider: where the nodes run: a config (`sky.AWS(...)`, `sky.RunPod()`, `sky.VastAI()`,
            `sky.Local()`), its name (`"aws"`, `"aws,runpod"`), or a list of those; default `sky.Local()`.
        accelerator: what each node carries: `sky.accelerators.H100(count=8)` or `"H100:8"`; None: CPU only.
        nodes: the pool's size: a whole number, or `sky.Nodes(desired, min=..., max=...)` (elastic).
        allocation: `"spot-if-available"` (default), `"spot"`, `"on-demand"` or `"cheapest"`.
        image: what every node has before the first task (`sky.Image(pip=..., apt=..., env=...)`).
        region: the region (or location) to buy in; None: the provider's default.
        max_hourly_cost: the price ceiling **per node** (USD/h) of the offers considered.
        boot_timeout: seconds to wait for every node to join; None: the provider's `boot_timeout`.
        max_pool_hourly_cost: the ceiling of the whole pool's price (nodes × price per node);
            default $100/h, or `$SKYWARD_MAX_POOL_HOURLY_COST`.
        max_pool_nodes: the most nodes a pool may have; default 64, or `$SKYWARD_MAX_POOL_NODES`.
        dashboard: True runs Ray's dashboard on the head (it costs the head ~1.4 GB of memory),
            reachable here at `pool.dashboard_url` (through the pool's SSH tunnel on clouds).

    A pool over either pool ceiling is refused with `SpecError` before anything is created
    (`skyward_ray.planning.cost_guard`).
    """

    def __init__(
        self,
        *specs: Spec,
        provider: ProviderConfig | str | Sequence[ProviderConfig | str] | None = None,
        accelerator: Accelerator | str | None = None,
        nodes: int | Nodes = 1,
        allocation: Allocation = "spot-if-available",
        image: Image | None = None,
        region: str | None = None,
        max_hourly_cost: float | None = None,
        boot_timeout: float | None = None,
        max_pool_hourly_cost: float | None = None,
        max_pool_nodes: int | None = None,
        dashboard: bool = False,
    ) -> None:
        super().__init__()
        self.request = PoolRequest.from_arguments(
            list(specs), provider=provider, accelerator=accelerator, nodes=nodes, allocation=allocation, image=image,
            region=region, max_hourly_cost=max_hourly_cost, boot_timeout=boot_timeout,
            max_pool_hourly_cost=max_pool_hourly_cost, max_pool_nodes=max_pool_nodes, dashboard=dashboard)
        self.desired = self.request.desired  # elastic when min=/max= differ from desired (see cluster/elastic.py)
        self.image = self.request.image
        self.specs: list[Spec] = self.request.specs
        self._keeper: KeeperMode | None = None  # a detached pool's keeper: no driver here, state in the record
        self._cluster: Cluster | None = None
        self._replacer: NodeReplacer | None = None
        self._scaler: ElasticScaler | None = None  # elastic pools: Ray's autoscaler, which also replaces lost nodes
        self._state = "new"
        self._lock = threading.RLock()
        self._signals = PoolSignals(closing=lambda: self._state == "closing", lost=lambda: self._head.error)
        self._head = HeadLoss(lambda: self._cluster, self.dispatcher.watch, self._signals, end_pool=self._close)
        self._code = StagedCode.nothing()
        self._code_modules: list[str] = []  # the staged user code, as py_modules entries
        self.plan: Plan | None = None
        self.failures: list[tuple[Offer, BaseException]] = []  # offers tried before the one that worked
        self._ledgers: list[Ledger] = []  # one per launch attempt: failed attempts' machines cost money too
        self._api_log: api_log.PoolLog | None = None  # the first-contact log (SKYWARD_DEBUG=1), while the pool lives
        self._dashboard: Dashboard | None = None  # `dashboard=True` (a keeper opens its own: its users sign in apart)

    @classmethod
    def for_keeper(cls, keeper: KeeperMode, *specs: Spec, **arguments: Any) -> "Compute":
        """The pool a detached pool's keeper makes: named `keeper.name`, its record `kind="keeper"`
        with `keeper.state` from the start, brought up without making this process a Ray driver
        (the keeper beats and holds the tunnel; the users' scripts are the drivers)."""
        compute = cls(*specs, **arguments)
        compute._keeper = keeper
        return compute

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> "Compute":
        if self._state != "new":
            raise PoolClosedError("a sky.Compute pool can be entered once; create a new one")
        if ray.is_initialized():
            raise SpecError(
                "this process is already a Ray driver (ray.init was called, or another pool is open); "
                "call ray.shutdown() or leave the other pool before entering sky.Compute"
            )
        # the user's own modules; too big → SpecError, nothing started (a keeper runs none: its clients ship theirs)
        code = StagedCode.find(self.image) if self._keeper is None else StagedCode.nothing()
        self._api_log = api_log.open_pool_log(self._keeper.name if self._keeper else "pool")  # SKYWARD_DEBUG=1
        try:
            self.plan = self.request.plan()
            self.request.check_cost(self.plan.chosen)
        except BaseException as error:
            self._end_api_log(error)
            raise
        self._signals.install()
        _OPEN_POOLS.add(self)
        try:
            self._code = code
            self._code_modules = code.stage()
            self.dispatcher.shipped = code.shipped
            self._cluster = launch_from_plan(self.request, self.plan, self._runtime_env, self._keeper,
                                             self.failures, self._ledgers)
        except BaseException as error:
            log = self._api_log
            self._close(error)  # its teardown's calls are logged too
            self._end_api_log(error, log)
            raise
        self._signals.install()  # ray.init put its own SIGTERM handler in place of ours
        try:
            # elastic pools: Ray's autoscaler replaces lost workers; the replacer then only watches the head
            self._replacer = NodeReplacer(self._cluster, on_head_lost=self._head.on_head_lost,
                                          replace_workers=not self.desired.elastic).start()
            if self.desired.elastic:
                self._scaler = ElasticScaler(self._cluster, self.desired.floor, self.desired.ceiling,
                                             self.desired.idle_timeout).start()
        except BaseException as error:
            self._close(error)
            raise
        self.dispatcher.watch.set_loss_check(self._head.check_now)
        if self._keeper is None:
            self._open_call_channel()
        if self.request.dashboard and self._keeper is None:
            self._open_dashboard()
        self._state = "open"
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        self._close(exc)

    def _end_api_log(self, error: BaseException | None = None, log: api_log.PoolLog | None = None) -> None:
        """Close the first-contact log; with the pool's `error`, say where it is (printed, and noted on the error)."""
        log, self._api_log = log or self._api_log, None
        if log is None:
            return
        api_log.close_pool_log(log)
        if error is not None:
            error.add_note(f"the pool's first-contact log (every cloud call and the nodes' boot logs): {log.path}")
            console.print(f"[red]the pool's first-contact log: {log.path}[/]")

    def _open_call_channel(self) -> None:
        """Where this process reaches the pool through an SSH tunnel (Ray Client), the pool's calls go
        over the head's call channel (`channel_client`: one round trip a call) once it is open. It opens in the
        background (starting the head's actor takes a second or more): until then, and if it does
        not open (logged), calls go through Ray Client, as they would anyway."""
        cluster = self._cluster
        assert cluster is not None
        driver = cluster.driver
        if driver is None or driver.tunnel is None or not driver.through_client:
            return
        tunnel = driver.tunnel
        self.dispatcher.open_channel(lambda on_drop: CallChannel.open(
            lambda port: tunnel.stdio_command("127.0.0.1", port), cluster.provider.params.auth_token,
            cluster.nodes[0].ray_node_id, on_drop=on_drop))

    def _open_dashboard(self) -> None:
        """Reach the head's dashboard from here and say where it is (never the token: its file)."""
        cluster = self._cluster
        assert cluster is not None and cluster.driver is not None
        try:
            self._dashboard = open_dashboard(cluster.driver.gcs_client(), cluster.driver.tunnel)
            if self._dashboard is None:
                console.print("[yellow]Ray's dashboard did not come up on the head; the pool works without it[/]")
                return
            self._dashboard.token_file = write_token(dashboard_token_path(cluster.name),
                                                     cluster.provider.params.auth_token)
        except BaseException as error:
            self._close(error)
            raise
        console.print(self._dashboard.sign_in_hint())

    def _runtime_env(self, spec: Spec) -> dict[str, Any]:
        return job_runtime_env(self.image, spec.provider.nodes_share_driver_python, self._code_modules)

    def _close(self, error: BaseException | None = None) -> None:
        """Tear down. The pool is closed only once teardown is done: a teardown that fails leaves it
        in `_OPEN_POOLS`, and the exit hook tries again. Signals that come meanwhile are held.

        With `error` (the user's exception, or a failed launch's) propagating, a teardown failure is
        reported alongside it (a note on it, and the console), never instead of it.
        """
        with self._lock:
            if self._state in ("closed", "closing"):
                return
            previous_state, self._state = self._state, "closing"
        done = False
        try:
            with signals_held() as held:
                if self._scaler is not None:
                    self._scaler.stop()  # before teardown: no node may be launched while the pool ends
                if self._replacer is not None:
                    self._replacer.stop()
                cluster = self._cluster
                if cluster is not None:
                    t0 = time.monotonic()
                    self.dispatcher.before_disconnect()
                    if self._dashboard is not None:
                        self._dashboard.stop()
                    if error is None:
                        teardown(cluster)  # TeardownError: the pool stays open for the exit hook
                    elif not teardown_beside(cluster, error):
                        return
                    console.print(f"pool {cluster.name} gone ({time.monotonic() - t0:.1f}s); cost: {self.cost_summary}")
                done = True
        finally:
            with self._lock:
                if done:
                    self._finish_close()
                else:
                    self._state = previous_state
        if held and error is None and self._signals.signalled is None:  # a plain exit's teardown was signalled: obey now
            self._signals.signalled = held[0]
            raise as_exit(held[0])

    def _finish_close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        watch = self.dispatcher.watch
        watch.set_loss_check(None)
        if self._head.error is not None:
            watch.interrupt_waits(None)
        self._cluster = None
        self._signals.restore()
        self._end_api_log()
        _OPEN_POOLS.discard(self)
        self.dispatcher.shipped = frozenset()
        self._code.release()

    def close(self) -> None:
        """End the pool now (what leaving the `with` block does)."""
        self._close()

    def up(self, name: str | None = None, *, idle_timeout: float | str | None = "30m",
           max_lifetime: float | str | None = "8h", dashboard: bool = False,
           ready_timeout: float | None = None) -> detached.AttachedPool:
        """Launch this pool **detached**: a keeper process owns it, and it outlives this process.

        Returns `sky.attach(name)`: a handle on which the operators work (it joins the pool as a
        Ray driver on first use, and leaves it, without ending it, on `close()` or at the end of a
        `with` block); `.down()` ends the pool. Any other process can `sky.attach(name)`, and plain
        Ray code reaches it through `RAY_ADDRESS` (`skyward-ray env NAME`).

        The pool ends on its own after `idle_timeout` with no task running and no client attached,
        or after `max_lifetime` (durations: 90s, 30m, 8h; `None`/"none" for no limit, only when
        asked for). `dashboard=True` runs Ray's dashboard on the head, for `ray job submit`.
        """
        if self._state != "new":
            raise PoolClosedError("a sky.Compute pool can be brought up once; create a new one")
        record = detached.start(self.request, name, idle_timeout="none" if idle_timeout is None else idle_timeout,
                                max_lifetime="none" if max_lifetime is None else max_lifetime, dashboard=dashboard,
                                ready_timeout=ready_timeout)
        self._state = "closed"  # this object launched it; the keeper owns it
        return detached.attach(record.name)

    # -- facts ---------------------------------------------------------------------------------
    def _open_cluster(self) -> Cluster:
        if self._head.error is not None:
            raise self._head.error
        if self._state != "open" or self._cluster is None:
            state = "has exited" if self._state == "closed" else "has not been entered"
            raise PoolClosedError(f"this pool {state}; send work inside `with sky.Compute(...) as pool:`")
        return self._cluster

    @property
    def nodes(self) -> list[NodeInfo]:
        return list(self._open_cluster().nodes)

    @property
    def ray_address(self) -> str:
        driver = self._open_cluster().driver
        assert driver is not None
        return driver.address

    @property
    def name(self) -> str:
        return self._open_cluster().name

    @property
    def offer(self) -> Offer:
        return self._open_cluster().offer

    @property
    def cost(self) -> float:
        """USD spent so far (also after exit): every machine this pool started, failed launch
        attempts included, from its launch to its end, at the price of the offer it was launched
        from. List prices × wall time; the cloud's bill rounds in its own units."""
        return sum(ledger.spent() for ledger in self._ledgers)

    @property
    def cost_summary(self) -> str:
        """The cost as one line: machines, node-hours × price (market, price source) = USD."""
        if not self._ledgers:
            return "nothing started: $0.00"
        line = self._ledgers[-1].summary()
        earlier = sum(ledger.spent() for ledger in self._ledgers[:-1])
        tried = sum(len(ledger.spans) for ledger in self._ledgers[:-1])
        if tried:
            line += f"; plus ${earlier:,.4f} for {tried} machine(s) of failed launch attempts"
        return line

    @property
    def replaced(self) -> list[tuple[str, str]]:
        """Workers lost and replaced so far: (lost instance id, replacement instance id)."""
        return list(self._replacer.replaced) if self._replacer else []

    @property
    def cluster(self) -> Cluster:
        """The running cluster (the launcher's handle: its provider, driver and nodes), for the
        keeper that holds it and for diagnostics; `PoolClosedError` unless the pool is open."""
        return self._open_cluster()

    @property
    def dashboard_url(self) -> str | None:
        """Where Ray's dashboard answers on this machine (`dashboard=True`); None when off. It asks
        for the pool's Ray token (`Authorization: Bearer <token>`), kept 0600 in the file the
        pool's start line names."""
        self._open_cluster()
        return self._dashboard.url if self._dashboard is not None else None

    @property
    def timings(self) -> dict[str, float]:
        return dict(self._open_cluster().timings)

    def request_nodes(self, count: int) -> None:
        """Elastic pools: keep at least `count` nodes (capped at max) ready, with no work waiting,
        until the next request; `request_nodes(0)` lets idle nodes go again."""
        if not self.desired.elastic:
            raise SpecError(f"pool.request_nodes needs an elastic pool, e.g. nodes=sky.Nodes(min=1, max="
                            f"{max(2, self.desired.desired)}); this one has a fixed size of {self.desired.desired}")
        self._open_cluster()
        assert self._scaler is not None
        self._scaler.request_nodes(count)

    # -- what the operators need (`PoolOperations`) ------------------------------------------
    def ensure_open(self) -> None:
        """Raise `PoolClosedError` (or the pool's `PoolLostError`) unless work can be sent now."""
        self._open_cluster()

    def __repr__(self) -> str:
        where = f" {self._cluster.name}" if self._cluster else ""
        return f"<sky.Compute{where} {self._state}, nodes={self.desired.desired}>"


@atexit.register
def _close_open_pools() -> None:
    """Interpreter exit with a pool still open (no `with`, or sys.exit in a thread): end it."""
    for pool in list(_OPEN_POOLS):
        try:
            pool.close()
        except BaseException as error:  # noqa: BLE001 - every pool gets its turn
            console.print(f"[red]could not end pool {pool!r}: {type(error).__name__}: {error}[/]")
