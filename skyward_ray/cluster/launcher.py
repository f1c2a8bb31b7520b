"""Bring a cluster up through a script-booted Ray `NodeProvider`, and take it down again.

Order: prepare (`bootstrap_config`), head, then all workers at once (their boot scripts wait for
the head's port, so they boot while the head boots), connect this process as the driver, then
wait until Ray lists every node alive. Any failure on the way ends everything already created
before the error is raised, so a failed launch leaves nothing running or billing.

Provider-agnostic: the provider config names its node provider class; this module talks to it
only through Ray's `NodeProvider` interface and `ScriptBootedNodeProvider`'s few additions.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ray.autoscaler.tags import (
    NODE_KIND_HEAD,
    NODE_KIND_WORKER,
    STATUS_UP_TO_DATE,
    TAG_RAY_CLUSTER_NAME,
    TAG_RAY_LAUNCH_REQUEST,
    TAG_RAY_NODE_KIND,
    TAG_RAY_NODE_NAME,
    TAG_RAY_NODE_STATUS,
    TAG_RAY_USER_NODE_TYPE,
)

from skyward_ray import names
from skyward_ray.cluster import pool_state, ssh_keys
from skyward_ray.cluster.billing import Ledger
from skyward_ray.cluster.contract import ClusterParams
from skyward_ray.cluster.driver import CLIENT_SERVER_PORT, DriverConnection
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider, provider_section
from skyward_ray.cluster.ssh_tunnel import HostKeyMismatchError, SSHTunnel, TunnelError
from skyward_ray.console import console
from skyward_ray.errors import (
    AuthError,
    BootTimeoutError,
    CapacityError,
    ProvisioningError,
    QuotaError,
    SpecError,
    TeardownError,
)
from skyward_ray.planning.nodes import NodeInfo
from skyward_ray.planning.offers import Offer
from skyward_ray.planning.providers import ProviderConfig


@dataclass
class Cluster:
    """A running cluster: its provider handle, its nodes and this process's connection to it."""

    name: str
    provider: ScriptBootedNodeProvider
    offer: Offer
    instance_ids: list[str]
    driver: DriverConnection | None = None
    nodes: list[NodeInfo] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    timings: dict[str, float] = field(default_factory=dict)
    last_uncertain_create: float = -1e9  # when a create last ended with no id and no refusal (e.g. a lost response)
    lost: bool = False  # the head is gone: end the machines before disconnecting (Ray's shutdown is slow then)
    creating: int = 0  # creates in flight: teardown is not done while one may still return an id
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


def new_cluster_name() -> str:
    return f"sky-{secrets.token_hex(4)}"


def load_node_provider(config: ProviderConfig, params: ClusterParams, cluster_name: str) -> ScriptBootedNodeProvider:
    """Prepare the cluster's resources (`bootstrap_config`) and return its node provider."""
    node_provider = config.require_provisioning()
    module_name, _, class_name = node_provider.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    section = provider_section(node_provider, config.model_dump(), params)
    cluster_config = cls.bootstrap_config({"cluster_name": cluster_name, "provider": section})
    return cls(cluster_config["provider"], cluster_name)


def _tags(cluster_name: str, kind: str, index: int, launch_request: str) -> dict[str, str]:
    return {
        TAG_RAY_CLUSTER_NAME: cluster_name,
        TAG_RAY_NODE_KIND: kind,
        TAG_RAY_USER_NODE_TYPE: names.HEAD_TYPE if kind == NODE_KIND_HEAD else names.WORKER_TYPE,
        TAG_RAY_NODE_NAME: f"{cluster_name}-{kind}-{index}",
        TAG_RAY_NODE_STATUS: STATUS_UP_TO_DATE,
        TAG_RAY_LAUNCH_REQUEST: launch_request,
    }


def _create(cluster: Cluster, kind: str, index: int, launch_request: str) -> str:
    """One machine; its id goes to `cluster.instance_ids` the moment the cloud returns it."""
    with cluster.lock:
        cluster.creating += 1
    known = False  # did this create end with a known outcome (an id, or the cloud's typed refusal)?
    try:
        created = cluster.provider.create_node_with_resources_and_labels(
            {}, _tags(cluster.name, kind, index, launch_request), 1, {}, {names.NODE_INDEX: str(index)}
        )
        if not created:
            raise ProvisioningError(f"the provider created no node for node {index} of {cluster.name}")
        instance_id = next(iter(created))
        with cluster.lock:
            cluster.instance_ids.append(instance_id)
        known = True
        return instance_id
    except (CapacityError, AuthError, QuotaError, SpecError):
        known = True  # the cloud refused: nothing was started
        raise
    finally:
        with cluster.lock:
            cluster.creating -= 1
            if not known:  # a lost response or a failure midway: a machine may show up in the listing later
                cluster.last_uncertain_create = time.monotonic()


def create_worker(cluster: Cluster, index: int) -> str:
    """One more worker for a running cluster (a replacement keeps the lost node's index)."""
    return _create(cluster, NODE_KIND_WORKER, index, secrets.token_hex(4))


def provision(cluster: Cluster, nodes: int) -> None:
    """Start the head (index 0), then workers 1..nodes-1 at once.

    Every create runs in a worker thread and records its id in `cluster.instance_ids` as it
    returns, so an interruption at any point leaves the caller a complete list to end. The first
    failure, or a signal (KeyboardInterrupt/SystemExit raised here, in the waiting thread), cancels
    every create not yet started; the ones in flight are waited for, so their ids are recorded too.
    """
    launch_request = secrets.token_hex(4)
    stop = threading.Event()

    def create(kind: str, index: int) -> str | None:
        if stop.is_set():
            return None
        try:
            return _create(cluster, kind, index, launch_request)
        except BaseException:
            stop.set()
            raise

    executor = concurrent.futures.ThreadPoolExecutor(max_workers=min(16, nodes), thread_name_prefix="skyward-create")
    try:
        executor.submit(create, NODE_KIND_HEAD, 0).result()
        futures = [executor.submit(create, NODE_KIND_WORKER, i) for i in range(1, nodes)]
        for future in concurrent.futures.as_completed(futures):
            future.result()  # the first failure is raised (the rest are cancelled below)
        with cluster.lock:  # all there: head first, then by index
            by_index = [future.result() for future in futures]
            cluster.instance_ids[:] = cluster.instance_ids[:1] + by_index + [
                i for i in cluster.instance_ids[1:] if i not in by_index]
    except BaseException:
        stop.set()
        raise
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _port_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def _log_tail(provider: ScriptBootedNodeProvider, instance_id: str) -> str:
    return provider.log_tail(instance_id)


def launch(
    config: ProviderConfig,
    params: ClusterParams,
    cluster_name: str,
    offer: Offer,
    boot_timeout: float,
    runtime_env: dict[str, Any] | None,
    ledger: Ledger | None = None,
    connect: bool = True,
    detached: dict[str, Any] | None = None,
) -> Cluster:
    """Provision `params.nodes` nodes, boot Ray on them, and connect this process. Cleans up on failure.
    `ledger`, when given, records every machine's launch and end (what the pool spends).

    A detached pool's keeper passes `connect=False` (it keeps the heartbeat and the tunnel, but is
    no Ray driver: the users' scripts are) and its `detached` state, which goes in the pool's state
    file from the start (`kind="keeper"`)."""
    t0 = time.monotonic()
    record_pool(config, params, cluster_name, offer, detached)  # before anything exists: `skyward-ray gc` finds what follows
    try:
        provider = load_node_provider(config, params, cluster_name)
    except BaseException:  # prepare is all or nothing: no resource is left, so no state either
        pool_state.remove_record(cluster_name)
        raise
    provider.ledger = ledger
    cluster = Cluster(name=cluster_name, provider=provider, offer=offer, instance_ids=[])
    try:
        provision(cluster, params.nodes)
        head = cluster.instance_ids[0]
        cluster.timings["provision_s"] = time.monotonic() - t0

        deadline = time.monotonic() + boot_timeout
        if config.direct_driver:
            cluster.driver = _direct_driver(provider, head, runtime_env, deadline, boot_timeout)
        else:
            cluster.driver = _tunnelled_driver(provider, head, runtime_env, deadline, boot_timeout)
        cluster.timings["head_port_s"] = time.monotonic() - t0
        # Watch the head join through a plain GCS client first: a driver connected to a head that
        # then fails would be ended by Ray itself after 60 s, taking the user's process along. Once
        # the head is alive, connecting overlaps with the workers' boot.
        gcs = _gcs_when_up(cluster.driver, provider, head, deadline, boot_timeout)
        cluster.driver.start_heartbeat()  # from the moment the head answers: a driver dying in boot ends the pool
        _wait_for_nodes(gcs, provider, [head], offer, deadline, boot_timeout)
        cluster.timings["head_alive_s"] = time.monotonic() - t0
        if connect:
            cluster.driver.connect()
        cluster.timings["driver_s"] = time.monotonic() - t0
        cluster.nodes = _wait_for_nodes(gcs, provider, cluster.instance_ids, offer, deadline, boot_timeout)
        cluster.timings["ready_s"] = time.monotonic() - t0
        return cluster
    except BaseException as error:
        with signals_held() as held:
            teardown_beside(cluster, error)
        if held and isinstance(error, Exception):  # a Ctrl-C or SIGTERM during this teardown still ends the walk
            raise (KeyboardInterrupt() if held[0] == signal.SIGINT else SystemExit(128 + held[0])) from error
        raise


def _direct_driver(provider: ScriptBootedNodeProvider, head: str, runtime_env: dict[str, Any] | None,
                   deadline: float, boot_timeout: float) -> DriverConnection:
    """This process joins through the head's own raylet: only where it shares the head's machine (local)."""
    node_ip = provider.internal_ip(head)
    address = f"{node_ip}:{provider.gcs_port}"
    while not _port_open(node_ip, provider.gcs_port):
        _still_booting(provider, head, deadline, boot_timeout, f"did not open Ray's port {address}")
        time.sleep(0.1)
    return DriverConnection(address, address, provider.params.auth_token, runtime_env, node_ip=node_ip)


def _tunnelled_driver(provider: ScriptBootedNodeProvider, head: str, runtime_env: dict[str, Any] | None,
                      deadline: float, boot_timeout: float) -> DriverConnection:
    """Ray Client and a GCS client through an SSH tunnel to the head: a driver anywhere (a laptop).

    The head's host key was generated here and delivered in its boot payload, so it is pinned in a
    per-cluster known_hosts: a different key is refused at once. Until the head's sshd answers
    (it is still booting) connecting is retried; the machine ending meanwhile fails the launch.
    """
    machine = None
    while machine is None or not machine.public_ip:
        _still_booting(provider, head, deadline, boot_timeout, "got no public address")
        machine = next((m for m in provider.machines(fresh=True) if m.instance_id == head), None)
        if machine is None or not machine.public_ip:
            time.sleep(0.5)
    endpoint = provider.cloud.ssh_endpoint(machine)
    identity, host_key = provider.ssh_files()
    known_hosts = ssh_keys.write_known_hosts(identity.parent / "known_hosts", endpoint.host, endpoint.port, host_key)
    tunnel = SSHTunnel(endpoint.host, endpoint.port, endpoint.user, identity, known_hosts,
                       forwards=[(0, "127.0.0.1", provider.gcs_port), (0, "127.0.0.1", CLIENT_SERVER_PORT)],
                       low_latency=True)
    while True:
        try:
            tunnel.start(timeout=min(15.0, max(1.0, deadline - time.monotonic())))
            break
        except HostKeyMismatchError:
            raise  # not the machine we started, or someone in between: never retried
        except TunnelError as error:  # sshd not up yet, or the login key not installed yet
            _still_booting(provider, head, deadline, boot_timeout,
                           f"gave no SSH tunnel ({endpoint.user}@{endpoint.host}:{endpoint.port})", error)
    return DriverConnection(f"127.0.0.1:{tunnel.local_port(0)}", f"ray://127.0.0.1:{tunnel.local_port(1)}",
                            provider.params.auth_token, runtime_env, tunnel=tunnel)


def _gcs_when_up(driver: DriverConnection, provider: ScriptBootedNodeProvider, head: str, deadline: float,
                 boot_timeout: float) -> Any:
    """A GCS client once the head's GCS answers (a forwarded port accepts before the GCS is up)."""
    while True:
        try:
            return driver.gcs_client()
        except Exception as error:
            _still_booting(provider, head, deadline, boot_timeout, "gave no answer from Ray's GCS", error)
            time.sleep(0.5)


def _still_booting(provider: ScriptBootedNodeProvider, head: str, deadline: float, boot_timeout: float,
                   what: str, error: BaseException | None = None) -> None:
    """Between two polls of a booting head: fail if its machine ended, time out past the deadline."""
    _fail_if_dead(provider, [head])
    if time.monotonic() > deadline:
        cause = f" ({error})" if error is not None else ""
        raise BootTimeoutError(f"the head node {head} {what} within {boot_timeout:g}s{cause}.\n"
                               f"Last lines of its log:\n{_log_tail(provider, head)}")


def _fail_if_dead(provider: ScriptBootedNodeProvider, instance_ids: list[str]) -> None:
    for instance_id in instance_ids:
        if provider.is_terminated(instance_id):
            raise ProvisioningError(
                f"node {instance_id} stopped while booting.\nLast lines of its log:\n{_log_tail(provider, instance_id)}"
            )


def alive_nodes(gcs: Any, wanted: set[str] | None = None) -> dict[str, Any]:
    """The skyward nodes the head's GCS lists alive now, by instance id (only `wanted` ones, if given).

    Read through a plain GCS client, so it works in a process that is no Ray driver (a keeper);
    empty while the GCS is still starting or too busy to answer."""
    try:
        table = gcs.get_all_node_info(timeout=5)
    except Exception:  # the GCS is still starting, or busy on this small machine
        return {}
    return {
        info.labels[names.INSTANCE_ID]: info
        for info in table.values()
        if info.state == 0 and names.INSTANCE_ID in info.labels  # 0 = ALIVE
        and (wanted is None or info.labels[names.INSTANCE_ID] in wanted)
    }


def _wait_for_nodes(gcs: Any, provider: ScriptBootedNodeProvider, instance_ids: list[str], offer: Offer, deadline: float,
                    boot_timeout: float) -> list[NodeInfo]:
    """Wait until the GCS lists every instance alive; return them as `NodeInfo`, head first."""
    wanted = set(instance_ids)
    alive: dict[str, Any] = {}
    while True:
        alive = alive_nodes(gcs, wanted)
        if len(alive) == len(wanted):
            break
        missing = sorted(wanted - set(alive))
        _fail_if_dead(provider, missing)
        if time.monotonic() > deadline:
            tails = "\n\n".join(f"--- {m} ---\n{_log_tail(provider, m)}" for m in missing)
            raise BootTimeoutError(
                f"{len(missing)} of {len(wanted)} nodes did not join the Ray cluster within {boot_timeout:g}s: "
                f"{', '.join(missing)}.\nLast lines of their logs:\n{tails}"
            )
        time.sleep(0.1)
    infos = []
    head_market = provider.params.head_market or offer.market
    for instance_id, info in alive.items():
        infos.append(NodeInfo(
            index=int(info.labels.get(names.NODE_INDEX, 0)),
            instance_id=instance_id,
            ray_node_id=info.node_id.hex(),
            ip=info.node_manager_address,
            provider=offer.provider,
            accelerator=offer.accelerator,
            accelerator_count=offer.count,
            spot=(head_market if info.labels.get(names.NODE_INDEX, "0") == "0" else offer.market) == "spot",
        ))
    return sorted(infos, key=lambda n: n.index)


# Two empty listings confirm that nothing is left. Every id a create returned is terminated by id,
# listed or not; but a create whose outcome is unknown (its response lost, a failure midway) may
# have started a machine the cloud lists only seconds later. After such a create, the later empty
# listing is taken at least this long after it: paid at most once per pool, and only then.
CONFIRM_INTERVAL = 10.0
_HELD_SIGNALS = tuple(s for s in (signal.SIGINT, getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None))
                      if s is not None)


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
    for sig in _HELD_SIGNALS:
        with contextlib.suppress(ValueError, OSError):
            previous[sig] = signal.signal(sig, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(sig, handler)


def reassert_signal_handlers() -> None:
    """Install Python's handlers again at the OS level. Ray's core worker puts its own SIGTERM
    handler in at `ray.init` and, at `ray.shutdown`, puts back what it found then (the default,
    which kills): Python still reports its own handler, but a SIGTERM would end the process
    mid-teardown."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in _HELD_SIGNALS:
        with contextlib.suppress(ValueError, OSError, TypeError):
            handler = signal.getsignal(sig)
            if handler is not None:
                signal.signal(sig, handler)


def teardown_beside(cluster: Cluster, error: BaseException) -> bool:
    """Teardown while `error` (the user's, or a failed launch's) propagates: a teardown failure is
    reported alongside it (a note on it, and the console), never instead of it. True when done."""
    try:
        teardown(cluster)
        return True
    except BaseException as teardown_error:  # noqa: BLE001 - reported, and the first error goes on
        ids = getattr(teardown_error, "instance_ids", None) or cluster.instance_ids
        text = (f"skyward_ray: the teardown of {cluster.name} failed too ({type(teardown_error).__name__}: "
                f"{teardown_error}); instances that may be left: {', '.join(ids) or 'none known'}")
        error.add_note(text)
        console.print(f"[red]{text}[/]")
        return False


def teardown(cluster: Cluster, wait_timeout: float = 120.0) -> list[str]:
    """Disconnect, then until the cloud confirms none is left: list the cluster's machines (by its
    tag) plus every id a create returned, terminate whatever is still active, list again.

    Done after two empty listings, the later at least `CONFIRM_INTERVAL` after the last create of
    unknown outcome (one is enough where the cloud's listing is consistent). Errors along the way are retried until
    `wait_timeout`; then `TeardownError` names what may be left. Removes the prepared resources once
    nothing is left. Returns [] (kept for callers that check it).
    """
    errors: list[BaseException] = []

    def disconnect() -> None:
        if cluster.driver is not None:
            try:
                cluster.driver.disconnect()
            except Exception as error:  # the machines must still end
                errors.append(error)
            finally:
                reassert_signal_handlers()

    if not cluster.lost:
        disconnect()  # first: a direct driver whose raylet ended first would be ended by Ray itself
    provider = cluster.provider
    consistent = provider.cloud_class.listing_is_consistent
    deadline = time.monotonic() + wait_timeout
    empty_listings = 0
    active: set[str] = set()
    ended: set[str] = set()  # ids the listing missed, terminated here without an error
    while True:
        with cluster.lock:
            known = set(cluster.instance_ids)
            creating = cluster.creating
        try:
            machines = provider.machines(fresh=True)
            active = {m.instance_id for m in machines if m.active}
            listed = {m.instance_id for m in machines}
            unlisted = known - listed - ended  # created, yet not listed (yet): end it anyway
            targets = active | unlisted
            if targets:
                empty_listings = 0
                provider.terminate_nodes(sorted(targets))
                ended |= targets  # terminated without an error: not again once the listing drops it
            elif not creating and (consistent or time.monotonic() - cluster.last_uncertain_create >= CONFIRM_INTERVAL):
                empty_listings += 1
                if consistent or empty_listings >= 2:
                    break
        except Exception as error:
            errors.append(error)
        if time.monotonic() > deadline:
            left = sorted(active | (known - ended))
            raise TeardownError(
                f"could not confirm within {wait_timeout:g}s that every machine of {cluster.name} ended; may be "
                f"left: {', '.join(left) or 'none listed'}"
                + (f"; last error: {type(errors[-1]).__name__}: {errors[-1]}" if errors else ""), left)
        time.sleep(0.2 if empty_listings else 0.5)
    if cluster.lost:
        disconnect()
    try:
        provider.cleanup_cluster_resources()
        pool_state.remove_record(cluster.name)  # only once nothing is left: `gc` needs it until then
    except Exception as error:
        raise TeardownError(f"every machine of {cluster.name} ended, but removing its resources failed: "
                            f"{type(error).__name__}: {error}") from error
    return []


def record_pool(config: ProviderConfig, params: ClusterParams, cluster_name: str, offer: Offer,
                detached: dict[str, Any] | None = None) -> None:
    """The pool's 0600 state file: which provider, what it costs, and which process keeps it alive
    (this one: the driver, or a detached pool's keeper)."""
    pool_state.write_record(pool_state.PoolRecord(
        name=cluster_name, provider=config.name, provider_config=config.without_secrets(),
        owner=pool_state.Owner.current(), region=params.region, offer=params.offer, price_per_node=offer.price,
        nodes=params.nodes, kind="keeper" if detached is not None else "driver", detached=detached))
