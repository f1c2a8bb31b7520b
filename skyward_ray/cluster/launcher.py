"""Bring a cluster up through a script-booted Ray `NodeProvider`; end it again if anything fails.

Order: the pool's state file, prepare (`bootstrap_config`), head, then all workers at once (their
boot scripts wait for the head's port, so they boot while the head boots), the head's GCS, then
every node alive. Any failure on the way ends everything already created before the error is
raised, so a failed launch leaves nothing running or billing.

Two jobs, two entry points: `launch` makes this process the pool's Ray driver (a `with` block);
`launch_detached` brings up a detached pool for its keeper, which beats and holds the tunnel
but is no Ray driver (the users' scripts are).

Provider-agnostic: the provider config names its node provider class; the parts talk to it only
through Ray's `NodeProvider` interface and `ScriptBootedNodeProvider`'s few additions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from skyward_ray.cluster import api_log, boot_wait, pool_state, provisioning
from skyward_ray.cluster.billing import Ledger
from skyward_ray.cluster.boot_wait import alive_nodes
from skyward_ray.cluster.contract import ClusterParams
from skyward_ray.cluster.running import Cluster, new_cluster_name
from skyward_ray.cluster.signals import as_exit, signals_held
from skyward_ray.cluster.teardown import teardown_beside
from skyward_ray.planning.offers import Offer
from skyward_ray.planning.providers import ProviderConfig
from skyward_ray.errors import ProvisioningError

__all__ = ["Cluster", "alive_nodes", "launch", "launch_detached", "new_cluster_name"]


def launch(config: ProviderConfig, params: ClusterParams, cluster_name: str, offer: Offer, boot_timeout: float,
           runtime_env: dict[str, Any] | None, ledger: Ledger | None = None,
           announce: Callable[[], object] | None = None) -> Cluster:
    """Provision `params.nodes` nodes, boot Ray on them, and connect this process as their Ray
    driver (it joins once the head is alive, overlapping the workers' boot). `ledger`, when
    given, records every machine's launch and end (what the pool spends); `announce`, when given,
    is called once the cloud prepared the cluster, before the first machine is created."""
    provisioning.record_pool(config, params, cluster_name, offer)  # before anything exists: `gc` finds what follows
    return _bring_up(config, params, cluster_name, offer, boot_timeout, runtime_env, ledger, connect=True,
                     announce=announce)


def launch_detached(config: ProviderConfig, params: ClusterParams, cluster_name: str, offer: Offer,
                    boot_timeout: float, runtime_env: dict[str, Any] | None, ledger: Ledger | None,
                    detached: dict[str, Any], announce: Callable[[], object] | None = None) -> Cluster:
    """A detached pool, for its keeper: the same machines and boot, the heartbeat and the tunnel,
    but no Ray driver here. Its state record is `kind="keeper"` with `detached` from the start."""
    provisioning.record_pool(config, params, cluster_name, offer, detached)
    return _bring_up(config, params, cluster_name, offer, boot_timeout, runtime_env, ledger, connect=False,
                     announce=announce)


def _bring_up(config: ProviderConfig, params: ClusterParams, cluster_name: str, offer: Offer, boot_timeout: float,
              runtime_env: dict[str, Any] | None, ledger: Ledger | None, connect: bool,
              announce: Callable[[], object] | None = None) -> Cluster:
    t0 = time.monotonic()
    try:
        provider = provisioning.load_node_provider(config, params, cluster_name)
    except BaseException:  # prepare is all or nothing: no resource is left, so no state either
        pool_state.remove_record(cluster_name)
        raise
    provider.ledger = ledger
    api_log.register_secret(params.auth_token)
    api_log.note(f"cluster {cluster_name}: {params.nodes} node(s) of {offer.label}")
    cluster = Cluster(name=cluster_name, provider=provider, offer=offer, instance_ids=[])
    try:
        if announce is not None:  # the cloud prepared the cluster: its checks passed, machines follow
            announce()
        provisioning.provision(cluster, params.nodes)
        head = cluster.instance_ids[0]
        cluster.timings["provision_s"] = time.monotonic() - t0

        deadline = time.monotonic() + boot_timeout
        reach = boot_wait.direct_driver if config.direct_driver else boot_wait.tunnelled_driver
        cluster.driver = reach(provider, head, runtime_env, deadline, boot_timeout)
        cluster.timings["head_port_s"] = time.monotonic() - t0
        # Watch the head join through a plain GCS client first: a driver connected to a head that
        # then fails would be ended by Ray itself after 60 s, taking the user's process along. Once
        # the head is alive, connecting overlaps with the workers' boot.
        gcs = boot_wait.gcs_when_up(cluster.driver, provider, head, deadline, boot_timeout)
        cluster.driver.start_heartbeat()  # from the moment the head answers: a driver dying in boot ends the pool
        boot_wait.wait_for_nodes(gcs, provider, [head], offer, deadline, boot_timeout)
        cluster.timings["head_alive_s"] = time.monotonic() - t0
        if connect:
            _connect_or_explain(cluster, provider, head)
        cluster.timings["driver_s"] = time.monotonic() - t0
        cluster.nodes = boot_wait.wait_for_nodes(gcs, provider, cluster.instance_ids, offer, deadline, boot_timeout)
        cluster.timings["ready_s"] = time.monotonic() - t0
        api_log.note(f"cluster {cluster_name}: ready, {cluster.timings}")
        return cluster
    except BaseException as error:
        api_log.note(f"cluster {cluster_name}: launch failed after {time.monotonic() - t0:.1f}s "
                     f"({api_log.outcome_of(error)}); machines {cluster.instance_ids}")
        api_log.record_node_logs(provider, list(cluster.instance_ids), "read before they are ended")
        with signals_held() as held:
            teardown_beside(cluster, error)
        if held and isinstance(error, Exception):  # a Ctrl-C or SIGTERM during this teardown still ends the walk
            raise as_exit(held[0]) from error
        raise


def _connect_or_explain(cluster: Cluster, provider: Any, head: str) -> None:
    """Join the head as a driver; when that fails, the error carries the head's own last log lines
    (its watchdog or Ray says why the head went), not only Ray Client's view of a dropped channel."""
    try:
        cluster.driver.connect()
    except ProvisioningError as error:
        if type(error) is not ProvisioningError:  # a typed subclass keeps its type and message
            raise
        try:
            step, tail = boot_wait.boot_report(provider, head)
        except Exception as log_error:  # noqa: BLE001 - the log is a courtesy; the error stands
            step, tail = "unknown", f"(its log could not be read: {log_error})"
        raise ProvisioningError(f"{error}\nThe head node {head}'s last boot step: {step}. Last lines of its log:\n"
                                f"{tail}") from None
