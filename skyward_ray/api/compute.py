"""`sky.Compute`: a pool that exists only inside its `with` block.

Entering selects an offer (`sky.plan`), provisions through the provider's Ray `NodeProvider`,
boots Ray, and connects this process as the driver. Leaving, for any reason (normal exit, an
exception, KeyboardInterrupt, SIGTERM/SIGHUP, interpreter exit), terminates every node and waits
until the provider lists none. Work is sent with the operators of `PendingFunction`; see
`skyward_ray.api.dispatch` for how a call becomes a Ray task.
"""

from __future__ import annotations

import atexit
import importlib
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray

from skyward_ray import names
from skyward_ray.api import dispatch, user_code
from skyward_ray.api.operations import PoolOperations
from skyward_ray.cluster import launcher, pool_state
from skyward_ray.cluster.billing import Ledger
from skyward_ray.cluster.contract import ClusterParams
from skyward_ray.cluster.elastic import ElasticScaler
from skyward_ray.cluster.replacer import NodeReplacer
from skyward_ray.console import console
from skyward_ray.errors import (
    AuthError,
    CapacityError,
    PoolClosedError,
    PoolLostError,
    ProvisioningError,
    QuotaError,
    SpecError,
    SpotQuotaError,
)
from skyward_ray.planning import cost_guard
from skyward_ray.planning import plan as planning
from skyward_ray.planning.image import Image
from skyward_ray.planning.nodes import NodeInfo, Nodes, as_nodes
from skyward_ray.planning.offers import Offer, Plan
from skyward_ray.planning.spec import Spec

if TYPE_CHECKING:
    from skyward_ray.api.detached import AttachedPool

_OPEN_POOLS: "weakref.WeakSet[Compute]" = weakref.WeakSet()
# The driver beats from the moment the head's GCS answers; the head's watchdog allows it the
# heartbeat grace plus this much (an SSH tunnel coming up) for the first beat.
FIRST_BEAT_MARGIN = 15.0
HEAD_CHECK_S = 5.0  # after a wait's system error, how long the head's machine may take to list as ended
_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None), signal.SIGINT)
                 if s is not None)


class Compute(PoolOperations):
    """A pool of nodes, provisioned on entry and gone on exit.

    >>> with sky.Compute(nodes=3) as pool:          # provider omitted: sky.Local()
    ...     square(7) >> pool

    Money: `max_hourly_cost` caps the price **per node** (USD/h) of the offers considered;
    `max_pool_hourly_cost` (default $100/h, or `$SKYWARD_MAX_POOL_HOURLY_COST`) caps the whole
    pool's price (nodes × price per node) and `max_pool_nodes` (default 64, or
    `$SKYWARD_MAX_POOL_NODES`) its size: a pool over either is refused with `SpecError` before
    anything is created (`skyward_ray.planning.cost_guard`).
    """

    def __init__(
        self,
        *specs: Spec,
        provider: Any = None,
        accelerator: Any = None,
        nodes: int | Nodes = 1,
        allocation: str = "spot-if-available",
        image: Image | None = None,
        region: str | None = None,
        max_hourly_cost: float | None = None,
        boot_timeout: float | None = None,
        max_pool_hourly_cost: float | None = None,
        max_pool_nodes: int | None = None,
    ) -> None:
        self.desired = as_nodes(nodes)  # elastic when min=/max= differ from desired (see cluster/elastic.py)
        self._ceilings = cost_guard.ceilings(max_pool_hourly_cost, max_pool_nodes)
        cost_guard.check_nodes(self.desired.max or self.desired.desired, self._ceilings)
        if image is not None and not isinstance(image, Image):
            raise SpecError(f"image={image!r}: pass a sky.Image(pip=[...], apt=[...], env={{...}})")
        self.image = image or Image()
        self.specs: list[Spec] = planning.specs_from_arguments(
            list(specs), provider=provider, accelerator=accelerator, allocation=allocation, region=region,
            max_hourly_cost=max_hourly_cost,
        )
        for spec in self.specs:  # refuse what cannot be honoured before anything is provisioned
            spec.provider.require_provisioning()
            self.image.check_for(spec.provider)
        self._boot_timeout = boot_timeout
        # what a keeper needs to make this same pool in its own process (`up`)
        self._arguments: dict[str, Any] = {"nodes": self.desired, "image": self.image, "boot_timeout": boot_timeout,
                                           "max_pool_hourly_cost": max_pool_hourly_cost, "max_pool_nodes": max_pool_nodes}
        self._name: str | None = None  # a detached pool's own name (else each launch attempt gets a fresh one)
        self._detached: dict[str, Any] | None = None  # set in a keeper: no driver here, state in the record
        self._cluster: launcher.Cluster | None = None
        self._replacer: NodeReplacer | None = None
        self._scaler: ElasticScaler | None = None  # elastic pools: Ray's autoscaler, which also replaces lost nodes
        self._state = "new"
        self._lock = threading.RLock()
        self._previous_handlers: dict[int, Any] = {}
        self._signalled: int | None = None  # the first signal that is ending the pool
        self._lost: PoolLostError | None = None  # set when the head is gone
        self._code_modules: list[str] = []  # the staged user code, as py_modules entries
        self._code_dir: str | None = None
        self.plan: Plan | None = None
        self.failures: list[tuple[Offer, ProvisioningError]] = []  # offers tried before the one that worked
        self._ledgers: list[Ledger] = []  # one per launch attempt: failed attempts' machines cost money too

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
        code = user_code.collect(self.image) if self._detached is None else user_code.UserCode()
        self.plan = planning.plan(*self.specs, nodes=self.desired.ceiling)  # an elastic pool is priced at max
        cost_guard.check_cost(self.desired.ceiling, self.plan.chosen.price, self._ceilings, _offer_words(self.plan.chosen))
        self._install_signal_handlers()
        _OPEN_POOLS.add(self)
        try:
            self._stage_user_code(code)
            self._cluster = self._launch_from_plan(self.plan)
        except BaseException as error:
            self._close(error)
            raise
        self._install_signal_handlers()  # ray.init put its own SIGTERM handler in place of ours
        try:
            # elastic pools: Ray's autoscaler replaces lost workers; the replacer then only watches the head
            self._replacer = NodeReplacer(self._cluster, on_head_lost=self._on_head_lost,
                                          replace_workers=not self.desired.elastic).start()
            if self.desired.elastic:
                self._scaler = ElasticScaler(self._cluster, self.desired.floor, self.desired.ceiling,
                                             self.desired.idle_timeout).start()
        except BaseException as error:
            self._close(error)
            raise
        dispatch.watch_pool(self._head_gone_now)
        self._state = "open"
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, traceback: object) -> None:
        self._close(exc)

    def _stage_user_code(self, code: user_code.UserCode) -> None:
        """Copy the user's modules to a directory of this pool's own, for the job's `py_modules`."""
        if code.files:
            self._code_dir = tempfile.mkdtemp(prefix="skyward-code-")
            self._code_modules = code.stage(Path(self._code_dir))
        user_code.activate(code)

    def _launch_from_plan(self, plan: Plan) -> launcher.Cluster:
        """Walk the plan: capacity errors move to the next offer; auth/quota errors skip the provider."""
        blocked_providers: set[str] = set()
        blocked_spot: set[str] = set()  # providers whose spot quota is used up: their on-demand offers still go
        for offer in plan.offers:
            spec = plan.specs[offer.spec_index]
            if spec.provider.name in blocked_providers or (offer.market == "spot" and spec.provider.name in blocked_spot):
                continue
            try:  # a fallback dearer than the cost guard allows is skipped, never bought
                cost_guard.check_cost(self.desired.ceiling, offer.price, self._ceilings, _offer_words(offer))
            except SpecError as error:
                self.failures.append((offer, error))  # type: ignore[arg-type]
                continue
            cluster_name = self._name or launcher.new_cluster_name()
            boot_timeout = self._boot_timeout or spec.provider.boot_timeout
            params = self._cluster_params(spec, offer, boot_timeout)
            with console.status(f"starting {self.desired.desired} node(s) on {offer.provider} "
                                f"({offer.instance_type}, {offer.market})"):
                ledger = Ledger(offer.price, offer.market, offer.price_source, offer.price_as_of)
                self._ledgers.append(ledger)
                try:
                    cluster = launcher.launch(spec.provider, params, cluster_name, offer, boot_timeout,
                                              self._runtime_env(spec), ledger=ledger,
                                              connect=self._detached is None, detached=self._detached)
                except CapacityError as error:
                    self.failures.append((offer, error))
                    continue
                except SpotQuotaError as error:
                    self.failures.append((offer, error))
                    blocked_spot.add(spec.provider.name)
                    continue
                except (AuthError, QuotaError) as error:
                    self.failures.append((offer, error))
                    blocked_providers.add(spec.provider.name)
                    continue
            console.print(f"[green]pool ready[/]: {len(cluster.nodes)} node(s) on {offer.provider} "
                          f"in {cluster.timings.get('ready_s', 0):.1f}s")
            return cluster
        tried = "\n".join(f"  - {o.provider} {o.instance_type} {o.region or ''} {o.market}: "
                          f"{type(error).__name__}: {error}" for o, error in self.failures)
        kinds = {type(error) for _, error in self.failures}
        error_type = kinds.pop() if len(kinds) == 1 else ProvisioningError  # all auth → AuthError, etc.
        raise error_type(f"no offer in the plan could be provisioned. Tried:\n{tried}")

    def _cluster_params(self, spec: Spec, offer: Offer, boot_timeout: float) -> ClusterParams:
        """What this cluster is, for the provider: the offer bought, the image, the token."""
        installs_at_boot = not spec.provider.nodes_share_driver_python
        accelerator = offer.accelerator or (spec.accelerator.name if spec.accelerator else None)
        return ClusterParams(
            auth_token=secrets.token_hex(32),  # a fresh Ray auth token per cluster
            nodes=self.desired.desired,
            instance_type=offer.instance_type,
            market=offer.market,
            head_market=self._head_market(offer),
            region=offer.region,
            zone=offer.zone,
            offer=offer.label,
            accelerator=accelerator,
            accelerator_count=offer.count if accelerator else 0,
            heartbeat_grace=spec.provider.heartbeat_grace,
            first_heartbeat_grace=spec.provider.heartbeat_grace + FIRST_BEAT_MARGIN,
            boot_deadline=max(boot_timeout * 2, 120.0),
            pip=list(self.image.pip) if installs_at_boot else [],
            apt=list(self.image.apt),
            pool_tags=pool_state.owner_tags(offer.price),
            # A detached pool's clients are plain Ray scripts with no runtime_env of ours: the nodes
            # export the Image's environment themselves, and run the dashboard when asked.
            env=dict(self.image.env) if self._detached is not None else {},
            dashboard=bool(self._detached and self._detached.get("dashboard")),
        )

    def _head_market(self, offer: Offer) -> str | None:
        """A spot pool's head goes on-demand where the plan sells the same machine on-demand: a
        reclaimed worker is replaced, a reclaimed head ends the pool. (A one-node pool is its head:
        it stays in the market it was planned in.)"""
        if offer.market != "spot" or self.plan is None or self.desired.desired < 2:
            return None
        same = any(o.market == "on-demand" and o.provider == offer.provider and o.instance_type == offer.instance_type
                   and o.region == offer.region for o in self.plan.offers)
        return "on-demand" if same else None

    def _runtime_env(self, spec: Spec) -> dict[str, Any]:
        return job_runtime_env(self.image, spec.provider.nodes_share_driver_python, self._code_modules,
                               self.desired.desired)

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
            with launcher.signals_held() as held:
                if self._scaler is not None:
                    self._scaler.stop()  # before teardown: no node may be launched while the pool ends
                if self._replacer is not None:
                    self._replacer.stop()
                cluster = self._cluster
                if cluster is not None:
                    t0 = time.monotonic()
                    dispatch.before_disconnect()
                    if error is None:
                        launcher.teardown(cluster)  # TeardownError: the pool stays open for the exit hook
                    elif not launcher.teardown_beside(cluster, error):
                        return
                    console.print(f"pool {cluster.name} gone ({time.monotonic() - t0:.1f}s); cost: {self.cost_summary}")
                done = True
        finally:
            with self._lock:
                if done:
                    self._finish_close()
                else:
                    self._state = previous_state
        if held and error is None and self._signalled is None:  # a plain exit's teardown was signalled: obey now
            self._signalled = held[0]
            raise KeyboardInterrupt if held[0] == signal.SIGINT else SystemExit(128 + held[0])

    def _finish_close(self) -> None:
        if self._state == "closed":
            return
        self._state = "closed"
        dispatch.watch_pool(None)
        if self._lost is not None:
            dispatch.interrupt_waits(None)
        self._cluster = None
        self._restore_signal_handlers()
        _OPEN_POOLS.discard(self)
        user_code.deactivate()
        if self._code_dir is not None:
            shutil.rmtree(self._code_dir, ignore_errors=True)
            self._code_dir = None

    def close(self) -> None:
        """End the pool now (what leaving the `with` block does)."""
        self._close()

    def up(self, name: str | None = None, *, idle_timeout: float | str | None = "30m",
           max_lifetime: float | str | None = "8h", dashboard: bool = False,
           ready_timeout: float | None = None) -> "AttachedPool":
        """Launch this pool **detached**: a keeper process owns it, and it outlives this process.

        Returns `sky.attach(name)`: a handle on which the operators work (it joins the pool as a
        Ray driver on first use, and leaves it, without ending it, on `close()` or at the end of a
        `with` block); `.down()` ends the pool. Any other process can `sky.attach(name)`, and plain
        Ray code reaches it through `RAY_ADDRESS` (`skyward-ray env NAME`).

        The pool ends on its own after `idle_timeout` with no task running and no client attached,
        or after `max_lifetime` (durations: 90s, 30m, 8h; `None`/"none" for no limit, only when
        asked for). `dashboard=True` runs Ray's dashboard on the head, for `ray job submit`.
        """
        from skyward_ray.api import detached

        if self._state != "new":
            raise PoolClosedError("a sky.Compute pool can be brought up once; create a new one")
        record = detached.start(self, name, idle_timeout="none" if idle_timeout is None else idle_timeout,
                       max_lifetime="none" if max_lifetime is None else max_lifetime, dashboard=dashboard,
                       ready_timeout=ready_timeout)
        self._state = "closed"  # this object launched it; the keeper owns it
        return detached.attach(record.name)

    # -- signals: SIGTERM/SIGHUP unwind through `with` like an exception -------------------------
    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in _SIGNALS:
            previous = signal.getsignal(sig)
            if previous == signal.SIG_IGN and sig not in self._previous_handlers:
                continue  # the user ignores this signal on purpose (e.g. nohup): leave it so
            if sig == signal.SIGINT and previous not in (signal.default_int_handler, self._on_signal):
                continue  # the user handles Ctrl-C: theirs stays
            self._previous_handlers.setdefault(sig, previous)  # keep the user's, not Ray's, to restore
            signal.signal(sig, self._on_signal)

    def _head_gone_now(self) -> PoolLostError | None:
        """Asked by a wait that failed with a system error: is the head gone? (then the pool is lost)"""
        cluster = self._cluster
        if self._lost is None and cluster is not None and cluster.nodes:
            head = cluster.nodes[0].instance_id
            deadline = time.monotonic() + HEAD_CHECK_S  # a machine being ended may still list for a moment
            while not cluster.provider.is_terminated(head):
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.5)
            self._mark_lost(head)
            self._signalled = self._signalled or -1  # raised by the wait itself: no signal needed
        return self._lost

    def _on_head_lost(self, head_id: str) -> None:
        """From the replacer's thread: the head is gone. Raise `PoolLostError` in the user's code
        (the main thread, through this pool's own signal handler), which unwinds `with` and ends
        every machine left; where no handler of ours is in place, end the pool from here."""
        if self._lost is not None:
            return  # a wait found it first, and raised it
        self._mark_lost(head_id)
        for sig in _SIGNALS:
            if signal.getsignal(sig) == self._on_signal:
                # a real signal to the main thread: it also wakes a wait blocked on a lock (Ray Client)
                signal.pthread_kill(threading.main_thread().ident or 0, sig)
                return
        self._close(self._lost)

    def _mark_lost(self, head_id: str) -> None:
        self._lost = PoolLostError(
            f"the head node of pool {self._cluster.name if self._cluster else '?'} ({head_id}) was lost (a spot "
            "reclaim or a host failure); a pool cannot go on without its head, so every machine left is ended. "
            "Open a new pool to go on (an on-demand head avoids spot reclaims of the head).")
        if self._cluster is not None:
            self._cluster.lost = True
        dispatch.interrupt_waits(self._lost)

    def _on_signal(self, signum: int, frame: Any) -> None:
        """The first signal unwinds through `with` (SystemExit, or KeyboardInterrupt for SIGINT);
        more signals while that unwinding and its teardown run are ignored, so they cannot abort it."""
        if self._signalled is not None or self._state == "closing":
            return
        self._signalled = signum
        if self._lost is not None:
            raise self._lost
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, previous in list(self._previous_handlers.items()):
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._previous_handlers.clear()

    # -- facts ---------------------------------------------------------------------------------
    def _open_cluster(self) -> launcher.Cluster:
        if self._lost is not None:
            raise self._lost
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
    def _ensure_open(self) -> None:
        self._open_cluster()

    def _pool_offer(self) -> Offer:
        return self._open_cluster().offer

    def __repr__(self) -> str:
        where = f" {self._cluster.name}" if self._cluster else ""
        return f"<sky.Compute{where} {self._state}, nodes={self.desired.desired}>"


def job_runtime_env(image: Image, nodes_share_driver_python: bool, code_modules: list[str],
                    total_nodes: int) -> dict[str, Any]:
    """The Ray job's runtime_env for a driver of a pool (this process's own pool, or an attached one):
    the Image's environment, the user's staged modules, and where nodes do not share this interpreter,
    this very copy of skyward_ray (tasks import it)."""
    env_vars = {**image.env, names.ENV_TOTAL_NODES: str(total_nodes)}
    runtime_env: dict[str, Any] = {"env_vars": env_vars}
    if nodes_share_driver_python and image.pip:
        runtime_env["pip"] = list(image.pip)  # nodes share this interpreter: Ray's per-node virtualenv
    py_modules = list(code_modules)  # the user's own code, staged (already without excludes)
    if not nodes_share_driver_python:
        # Tasks import skyward_ray (instance_info, shard, the operators' wrappers): the nodes get this
        # very copy through Ray's job runtime_env, whatever is installed there.
        py_modules += shipped_packages()
        runtime_env["excludes"] = ["__pycache__", "*.pyc"]
    if py_modules:
        runtime_env["py_modules"] = py_modules
    return runtime_env


def _offer_words(offer: Offer) -> str:
    return f"{offer.provider} {offer.instance_type} {offer.market}"


def shipped_packages() -> list[str]:
    """The directories of the packages `import skyward_ray` needs on a node (it imports the provider
    configs and the catalog)."""
    return [os.path.dirname(importlib.import_module(name).__file__ or "") for name in sorted(user_code.OWN_PACKAGES)]


@atexit.register
def _close_open_pools() -> None:
    """Interpreter exit with a pool still open (no `with`, or sys.exit in a thread): end it."""
    for pool in list(_OPEN_POOLS):
        try:
            pool.close()
        except BaseException as error:  # noqa: BLE001 - every pool gets its turn
            console.print(f"[red]could not end pool {pool!r}: {type(error).__name__}: {error}[/]")
