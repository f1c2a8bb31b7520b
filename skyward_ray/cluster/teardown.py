"""Taking a cluster down: every machine ended and confirmed gone, then its prepared resources.

Runs on every way out of a pool (the `with` block's exit, a failed launch, a signal, the exit
hook). The signals that would interrupt it are held meanwhile (`signals.signals_held`).
"""

from __future__ import annotations

import time

from skyward_ray.cluster import pool_state
from skyward_ray.cluster.running import Cluster
from skyward_ray.cluster.signals import reassert_signal_handlers
from skyward_ray.console import console
from skyward_ray.errors import TeardownError


# Two empty listings confirm that nothing is left. Every id a create returned is terminated by id,
# listed or not; but a create whose outcome is unknown (its response lost, a failure midway) may
# have started a machine the cloud lists only seconds later. After such a create, the later empty
# listing is taken at least this long after it: paid at most once per pool, and only then.
CONFIRM_INTERVAL = 10.0


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
        pause = 0.2 if empty_listings else 0.5
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
                if consistent:  # the next listing shows the terminate's outcome already: take it now
                    pause = 0.0
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
        time.sleep(pause)
    if cluster.lost:
        disconnect()
    try:
        provider.cleanup_cluster_resources()
        pool_state.remove_record(cluster.name)  # only once nothing is left: `gc` needs it until then
    except Exception as error:
        raise TeardownError(f"every machine of {cluster.name} ended, but removing its resources failed: "
                            f"{type(error).__name__}: {error}") from error
    return []
