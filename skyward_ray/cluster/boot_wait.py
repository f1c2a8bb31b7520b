"""Waiting for a booting cluster: the head's port or SSH tunnel, its GCS, then every node alive.

Between polls a machine that ended fails the launch at once (with its log's last lines), and the
boot deadline turns into `BootTimeoutError` naming what did not happen in time. Either error
starts with "failed at step: ...", the last step the node's boot script logged (`last_boot_step`):
the first thing a reader needs, whatever else the log tail shows.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from skyward_ray import names
from skyward_ray.cluster import secret_delivery, ssh_keys
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

    The head's host key was generated here and delivered in its boot payload, or (a cloud whose
    heads print their own) is read from the head's console as the cloud shows it; either way it is
    pinned in a per-cluster known_hosts before the first connection, and a different key is refused
    at once. Until the head's sshd answers
    (it is still booting) connecting is retried; the machine ending meanwhile fails the launch.
    A head that waits for its secrets (no token in its payload) gets them over the same pinned
    session once its secret service answers (`secret_delivery`).
    """
    machine = None
    while machine is None or not machine.public_ip:
        _still_booting(provider, head, deadline, boot_timeout, "got no public address")
        machine = next((m for m in provider.machines(fresh=True) if m.instance_id == head), None)
        if machine is None or not machine.public_ip:
            time.sleep(0.5)
    endpoint = provider.cloud.ssh_endpoint(machine)
    identity = provider.ssh_identity()
    while (host_key := provider.head_host_key(head)) is None:
        _still_booting(provider, head, deadline, boot_timeout, "printed no SSH host key on its console")
        time.sleep(2.0)  # the console API is rate-limited like any other
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
    if provider.courier.head_waits:
        try:
            secret_delivery.deliver_until_taken(
                provider.courier, secret_delivery.ssh_sender(tunnel), provider.params.auth_token,
                provider.params.env, lambda error: _still_booting(
                    provider, head, deadline, boot_timeout, "took no token over SSH", error))
        except BaseException:
            tunnel.stop()
            raise
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
        step, tail = boot_report(provider, head)
        raise BootTimeoutError(f"failed at step: {step}: the head node {head} {what} within {boot_timeout:g}s"
                               f"{cause}.\nLast lines of its log:\n{tail}")


def _fail_if_dead(provider: ScriptBootedNodeProvider, instance_ids: list[str]) -> None:
    for instance_id in instance_ids:
        if provider.is_terminated(instance_id):
            step, tail = boot_report(provider, instance_id)
            raise ProvisioningError(
                f"failed at step: {step}: node {instance_id} stopped while booting.\nLast lines of its log:\n{tail}")


# A node's boot script says each step it starts, and how it ends, as "skyward: ..." lines.
STEP_MARK = "skyward: "
ENDING = "ending this machine"
SHOWN_LOG_LINES = 30  # the log lines an error shows
STEP_SCAN_LINES = 400  # the log lines searched for the last step (a failing step may print many)


def last_boot_step(log: str) -> str:
    """The boot step a node's log shows it failed at or stopped in, in the script's own words:
    "X" for its "X failed; ending this machine" line, else its last step line (with how the
    machine then ended, when the log says so)."""
    said = [line.split(STEP_MARK, 1)[1].strip() for line in log.splitlines() if STEP_MARK in line]
    if not said:
        return "unknown (its log has no \"skyward:\" step line: the boot script may not have started)"
    for text in reversed(said):
        if text.endswith(f" failed; {ENDING}"):
            return text[: -len(f" failed; {ENDING}")]
    steps = [text for text in said if ENDING not in text]
    if said[-1] in steps or not steps:
        return said[-1]
    return f"{steps[-1]} (then: {said[-1]})"


def boot_report(provider: ScriptBootedNodeProvider, instance_id: str) -> tuple[str, str]:
    """The node's last boot step and the last lines of its log, from one read of the log."""
    log = provider.log_tail(instance_id, STEP_SCAN_LINES)
    return last_boot_step(log), "\n".join(log.splitlines()[-SHOWN_LOG_LINES:])


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
            reports = {m: boot_report(provider, m) for m in missing}
            steps = "; ".join(f"{step} ({m})" for m, (step, _) in reports.items())
            tails = "\n\n".join(f"--- {m} ---\n{tail}" for m, (_, tail) in reports.items())
            raise BootTimeoutError(
                f"failed at step: {steps}: {len(missing)} of {len(wanted)} nodes did not join the Ray cluster "
                f"within {boot_timeout:g}s: {', '.join(missing)}.\nLast lines of their logs:\n{tails}"
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
