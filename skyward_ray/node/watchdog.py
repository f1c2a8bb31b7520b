"""Head-node watchdog: stop Ray when the driver's heartbeat stops (teardown layer 3).

A driver that is SIGKILLed, or a laptop that closes, runs no cleanup. The driver therefore bumps a
counter in Ray's internal KV every couple of seconds; this watchdog, started by the head's startup
script, reads it. When the value has not changed for `SKYWARD_WATCH_GRACE` seconds (measured on
this node's own clock, so clock skew between machines does not matter) it stops the head's Ray.
Workers then lose their head and exit, and every node's startup script ends its machine. No cloud
credentials are needed for any of this.

The driver beats from the moment the head's GCS answers, so the first beat must come within
`SKYWARD_WATCH_FIRST_GRACE` seconds of the GCS first answering here (until then the boot script's
own boot deadline holds). On the first beat the watchdog touches `SKYWARD_BOOT_DONE`, which calls
that deadline off.

A detached pool (`skyward-ray up`) is beaten by its keeper like any driver's pool; its max lifetime
comes here as `SKYWARD_WATCH_LIFETIME` (seconds on this node's clock from the watchdog's start;
unset: no limit, only where the user asked for none). Past it the watchdog stops Ray whatever the
heartbeat says, so a keeper that is gone or wedged, or anyone holding the cluster's token, cannot
keep the pool billing past the lifetime the user set. No heartbeat value makes the watchdog stand
down: the KV is writable by every task and token holder, so nothing read from it may disarm it.

This file runs standalone on the node (embedded into the startup script), so it imports nothing
from skyward_ray.
"""

import os
import signal
import sys
import time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _log(message: str) -> None:
    print(f"skyward watchdog: {message}", flush=True)


def _stop(ray_pid: int, why: str) -> int:
    """SIGTERM Ray, SIGKILL it after 10 s; the boot script then ends the machine."""
    _log(f"{why}; stopping ray")
    os.kill(ray_pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while _alive(ray_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(ray_pid):
        os.kill(ray_pid, signal.SIGKILL)
    return 0


def main() -> int:
    # Low priority: on a small machine the watchdog must not slow the boot it is watching.
    try:
        os.nice(10)
    except OSError:
        pass
    from ray._raylet import GcsClient

    address = os.environ["SKYWARD_WATCH_GCS"]
    ray_pid = int(os.environ["SKYWARD_WATCH_RAY_PID"])
    grace = float(os.environ.get("SKYWARD_WATCH_GRACE", "30"))
    first_grace = float(os.environ.get("SKYWARD_WATCH_FIRST_GRACE", "600"))
    namespace = os.environ.get("SKYWARD_WATCH_NAMESPACE", "skyward").encode()
    key = os.environ.get("SKYWARD_WATCH_KEY", "heartbeat").encode()
    lifetime = float(os.environ.get("SKYWARD_WATCH_LIFETIME") or "inf")

    boot_done = os.environ.get("SKYWARD_BOOT_DONE")

    client = None
    answered = False
    last_value = None
    started = last_change = last_read = time.monotonic()
    while _alive(ray_pid):
        time.sleep(1.0)
        asked = time.monotonic()
        try:
            if client is None:
                client = GcsClient(address=address)
            value = client.internal_kv_get(key, namespace, timeout=5)
            if not answered:  # the GCS answers: from now on the driver can beat, and must
                answered, last_change = True, time.monotonic()
            last_read = time.monotonic()
        except Exception:  # GCS not up yet, or too busy to answer this watchdog
            value = last_value
            if answered:
                # A read that failed is this watchdog's blindness, not the driver's silence: the
                # driver's clock stands still (a loaded head must not end a pool whose driver beats)
                # unless the GCS stays unreadable past the first grace: then the head is dead anyway.
                last_change += time.monotonic() - asked
                if time.monotonic() - last_read > first_grace:
                    return _stop(ray_pid, f"the head's GCS did not answer for {first_grace:g}s")
        now = time.monotonic()
        if now - started >= lifetime:
            return _stop(ray_pid, f"the pool's max lifetime ({lifetime:g}s) is reached")
        if value != last_value:
            if last_value is None and boot_done:
                try:
                    open(boot_done, "a").close()
                except OSError:
                    pass
            last_value, last_change = value, now
        limit = grace if last_value is not None else first_grace
        if now - last_change > limit:
            return _stop(ray_pid, f"no driver heartbeat for {now - last_change:.0f}s (limit {limit:g}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
