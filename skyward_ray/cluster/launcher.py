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
import importlib
import secrets
import socket
import time
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
from skyward_ray.errors import BootTimeoutError, ProvisioningError
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


def _create(provider: ScriptBootedNodeProvider, cluster_name: str, kind: str, index: int, launch_request: str) -> str:
    created = provider.create_node_with_resources_and_labels(
        {}, _tags(cluster_name, kind, index, launch_request), 1, {}, {names.NODE_INDEX: str(index)}
    )
    if not created:
        raise ProvisioningError(f"the provider created no node for node {index} of {cluster_name}")
    return next(iter(created))


def create_worker(cluster: Cluster, index: int) -> str:
    """One more worker for a running cluster (a replacement keeps the lost node's index)."""
    instance_id = _create(cluster.provider, cluster.name, NODE_KIND_WORKER, index, secrets.token_hex(4))
    cluster.instance_ids.append(instance_id)
    return instance_id


def provision(cluster: Cluster, nodes: int) -> None:
    """Start the head (index 0), then workers 1..nodes-1 at once; their ids go to `cluster.instance_ids`
    as they are created, so a failure part-way leaves the caller a complete list to end."""
    launch_request = secrets.token_hex(4)
    cluster.instance_ids.append(_create(cluster.provider, cluster.name, NODE_KIND_HEAD, 0, launch_request))
    if nodes < 2:
        return
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, nodes - 1)) as pool:
        futures = [pool.submit(_create, cluster.provider, cluster.name, NODE_KIND_WORKER, i, launch_request)
                   for i in range(1, nodes)]
        errors = []
        for future in futures:
            try:
                cluster.instance_ids.append(future.result())
            except BaseException as error:  # keep collecting: every created id must be known to end it
                errors.append(error)
        if errors:
            raise errors[0]


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
) -> Cluster:
    """Provision `params.nodes` nodes, boot Ray on them, and connect this process. Cleans up on failure.
    `ledger`, when given, records every machine's launch and end (what the pool spends)."""
    t0 = time.monotonic()
    record_pool(config, params, cluster_name, offer)  # before anything exists: `skyward-ray gc` finds what follows
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
        _wait_for_nodes(gcs, provider, [head], offer, deadline, boot_timeout)
        cluster.timings["head_alive_s"] = time.monotonic() - t0
        cluster.driver.connect()
        cluster.timings["driver_s"] = time.monotonic() - t0
        cluster.nodes = _wait_for_nodes(gcs, provider, cluster.instance_ids, offer, deadline, boot_timeout)
        cluster.timings["ready_s"] = time.monotonic() - t0
        return cluster
    except BaseException:
        teardown(cluster)
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


def _wait_for_nodes(gcs: Any, provider: ScriptBootedNodeProvider, instance_ids: list[str], offer: Offer, deadline: float,
                    boot_timeout: float) -> list[NodeInfo]:
    """Wait until the GCS lists every instance alive; return them as `NodeInfo`, head first."""
    wanted = set(instance_ids)
    alive: dict[str, Any] = {}
    while True:
        try:
            table = gcs.get_all_node_info(timeout=5)
        except Exception:  # the GCS is still starting, or busy on this small machine
            table = {}
        alive = {
            info.labels.get(names.INSTANCE_ID): info
            for info in table.values()
            if info.state == 0 and info.labels.get(names.INSTANCE_ID) in wanted  # 0 = ALIVE
        }
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
    for instance_id, info in alive.items():
        infos.append(NodeInfo(
            index=int(info.labels.get(names.NODE_INDEX, 0)),
            instance_id=instance_id,
            ray_node_id=info.node_id.hex(),
            ip=info.node_manager_address,
            provider=offer.provider,
            accelerator=offer.accelerator,
            accelerator_count=offer.count,
            spot=offer.market == "spot",
        ))
    return sorted(infos, key=lambda n: n.index)


def teardown(cluster: Cluster, wait_timeout: float = 60.0) -> list[str]:
    """Disconnect, terminate every node, wait until the provider lists none, remove prepared resources.

    Returns the instance ids still listed afterwards (empty on success).
    """
    if cluster.driver is not None:
        cluster.driver.disconnect()
    provider = cluster.provider
    try:
        live = provider.non_terminated_nodes({TAG_RAY_CLUSTER_NAME: cluster.name})
    except Exception:
        live = list(cluster.instance_ids)
    ids = sorted(set(live) | set(cluster.instance_ids))
    if ids:
        provider.terminate_nodes(ids)
    deadline = time.monotonic() + wait_timeout
    left = provider.non_terminated_nodes({TAG_RAY_CLUSTER_NAME: cluster.name})
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = provider.non_terminated_nodes({TAG_RAY_CLUSTER_NAME: cluster.name})
    if not left:
        provider.cleanup_cluster_resources()
        pool_state.remove_record(cluster.name)
    return left


def record_pool(config: ProviderConfig, params: ClusterParams, cluster_name: str, offer: Offer) -> None:
    """The pool's 0600 state file: which provider, what it costs, and which process keeps it alive."""
    pool_state.write_record(pool_state.PoolRecord(
        name=cluster_name, provider=config.name, provider_config=config.without_secrets(),
        owner=pool_state.Owner.current(), region=params.region, offer=params.offer, price_per_node=offer.price,
        nodes=params.nodes))
