"""Waiting for a booting cluster: the head's port or SSH tunnel, its GCS, then every node alive.

Between polls a machine that ended fails the launch at once (with its log's last lines), and the
boot deadline turns into `BootTimeoutError` naming what did not happen in time.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from skyward_ray import names
from skyward_ray.cluster import ssh_keys
from skyward_ray.cluster.driver import CLIENT_SERVER_PORT, DriverConnection
from skyward_ray.cluster.node_provider import ScriptBootedNodeProvider
from skyward_ray.cluster.ssh_tunnel import HostKeyMismatchError, SSHTunnel, TunnelError
from skyward_ray.errors import BootTimeoutError, ProvisioningError
from skyward_ray.planning.nodes import NodeInfo
from skyward_ray.planning.offers import Offer


def _port_open(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=0.5):
            return True
    except OSError:
        return False


def direct_driver(provider: ScriptBootedNodeProvider, head: str, runtime_env: dict[str, Any] | None,
                   deadline: float, boot_timeout: float) -> DriverConnection:
    """This process joins through the head's own raylet: only where it shares the head's machine (local)."""
    node_ip = provider.internal_ip(head)
    address = f"{node_ip}:{provider.gcs_port}"
    while not _port_open(node_ip, provider.gcs_port):
        _still_booting(provider, head, deadline, boot_timeout, f"did not open Ray's port {address}")
        time.sleep(0.1)
    return DriverConnection(address, address, provider.params.auth_token, runtime_env, node_ip=node_ip)


def tunnelled_driver(provider: ScriptBootedNodeProvider, head: str, runtime_env: dict[str, Any] | None,
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


def gcs_when_up(driver: DriverConnection, provider: ScriptBootedNodeProvider, head: str, deadline: float,
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
                               f"Last lines of its log:\n{provider.log_tail(head)}")


def _fail_if_dead(provider: ScriptBootedNodeProvider, instance_ids: list[str]) -> None:
    for instance_id in instance_ids:
        if provider.is_terminated(instance_id):
            raise ProvisioningError(
                f"node {instance_id} stopped while booting.\nLast lines of its log:\n{provider.log_tail(instance_id)}"
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


def wait_for_nodes(gcs: Any, provider: ScriptBootedNodeProvider, instance_ids: list[str], offer: Offer, deadline: float,
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
            tails = "\n\n".join(f"--- {m} ---\n{provider.log_tail(m)}" for m in missing)
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
