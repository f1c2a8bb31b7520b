"""The keeper: the one process that owns a detached pool (`python -m skyward_ray.api.keeper`).

Started by `skyward_ray.api.detached.start` in a session of its own, it reads the pool's
arguments from its stdin (a pipe: no secret touches a file) and brings the pool up through the
very path `sky.Compute` takes (plan walk, launcher, boot, heartbeat), without becoming a Ray
driver itself. Then it holds the pool:

- the heartbeat, so the head's watchdog ends the pool within its grace if the keeper dies
  (SIGKILL, a reboot): the same layer that protects a `with` block's pool;
- on clouds, the SSH tunnel (Ray Client's and the GCS's ports, and the dashboard's when there is
  one), whose local ends are the addresses users get;
- the two clocks: idle (no live Ray driver and no resources in use, asked of the head's GCS,
  `skyward_ray.cluster.activity`) and lifetime;
- its state in the pool's record (0600): ready, where it listens, the token, idle time, cost.

It ends the pool, with `sky.Compute`'s interrupt-safe teardown, on SIGTERM (`skyward-ray down`),
on either clock, or when the head is lost; the record goes once nothing is left.
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import time
from typing import Any

from skyward_ray.api.compute import Compute
from skyward_ray.api.detached import FAILED_MARK
from skyward_ray.api.request import KeeperMode
from skyward_ray.cluster import activity, pool_state
from skyward_ray.cluster.dashboard import Dashboard, open_dashboard
from skyward_ray.planning.detached import DetachedSpec, describe_duration

POLL_S = 1.0  # how often the clocks are checked
RECORD_S = 5.0  # how often idle time and cost are written to the record


def _log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} keeper: {message}", flush=True)


def _dashboard(compute: Compute) -> Dashboard | None:
    """The job API as users reach it (through a tunnel of its own on clouds); None if it did not come up."""
    driver = compute.cluster.driver
    assert driver is not None
    board = open_dashboard(driver.gcs_client(), driver.tunnel)
    if board is None:
        _log("the dashboard did not come up; `ray job submit` will not work on this pool")
    return board


def hold(compute: Compute, spec: DetachedSpec, started_at: float) -> str:
    """Keep the pool until a clock runs out; return why it ends. Signals end it from `time.sleep`."""
    cluster = compute.cluster
    assert cluster.driver is not None
    driver = cluster.driver
    driver.warm_up()  # Ray Client's first session on a fresh head may fail to start: not a user's problem
    board = _dashboard(compute) if spec.dashboard else None
    try:
        provider = compute.plan.specs[compute.offer.spec_index].provider if compute.plan else None
        pool_state.update_detached(
            cluster.name, status="ready", ray_address=driver.address, gcs_address=driver.gcs_address,
            node_ip=driver.node_ip, auth_token=cluster.provider.params.auth_token,
            dashboard_address=board.url if board else None, offer=compute.offer.model_dump(mode="json"),
            image_pip=list(compute.image.pip) if provider is not None and provider.nodes_share_driver_python else [],
            last_active=time.time(), cost=compute.cost)
        _log(f"pool {cluster.name} ready: {len(cluster.nodes)} node(s), Ray at {driver.address}; ends after "
             f"{describe_duration(spec.idle_timeout)} idle or {describe_duration(spec.max_lifetime)} in all")
        gcs = driver.gcs_client()
        last_active, last_written, busy = time.time(), 0.0, "starting"
        joining = activity.Joining()
        while True:
            time.sleep(POLL_S)
            now = time.time()
            try:
                reason = activity.busy_reason(gcs, joining)
            except Exception as error:  # the head busy or briefly away: not idle (its loss is the replacer's job)
                reason = f"the head did not answer ({type(error).__name__})"
            if reason is not None:
                last_active = now
            if reason != busy:
                _log(f"{reason or 'idle'}")
                busy = reason
            if spec.max_lifetime is not None and now - started_at >= spec.max_lifetime:
                return f"its max lifetime ({describe_duration(spec.max_lifetime)}) is reached"
            if spec.idle_timeout is not None and now - last_active >= spec.idle_timeout:
                return f"it was idle for {describe_duration(spec.idle_timeout)} (no task, no client)"
            if now - last_written >= RECORD_S:
                pool_state.update_detached(cluster.name, last_active=last_active, cost=compute.cost, busy=busy)
                last_written = now
    finally:
        # Before the teardown, whatever ends the hold (a clock, a signal): attached processes stop waiting on it.
        with contextlib.suppress(Exception):
            pool_state.update_detached(cluster.name, status="ending")
        if board is not None:
            board.stop()


def main() -> int:
    payload: dict[str, Any] = pickle.loads(sys.stdin.buffer.read())
    spec = DetachedSpec(**payload["detached"])
    started_at = time.time()
    compute = Compute.for_keeper(KeeperMode.from_spec(spec, payload.get("log"), started_at), *payload["specs"],
                                 **payload["arguments"])
    ready = False
    try:
        with compute:
            ready = True
            why = hold(compute, spec, started_at)
            _log(f"ending pool {spec.name}: {why}")
    except SystemExit as stop:  # SIGTERM/SIGHUP (`skyward-ray down`), through sky.Compute's handlers
        _log(f"pool {spec.name} ended on request (signal {int(stop.code or 0) - 128})" if ready else
             f"{FAILED_MARK}ProvisioningError: stopped by a signal while bringing the pool up")
        return 0 if ready else 1
    except BaseException as error:  # noqa: BLE001 - reported to `up`, which shows it with the log
        if not ready:
            _log(f"could not bring pool {spec.name} up")
            print(f"{FAILED_MARK}{type(error).__name__}: {error}", flush=True)
            return 1
        _log(f"pool {spec.name} ended: {type(error).__name__}: {error}")
        return 1
    _log(f"pool {spec.name} gone; cost: {compute.cost_summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
