"""Ray's "(raylet)" messages on this driver's stderr, behind a switch (`SKYWARD_NODE_LOGS=1`, `--verbose`).

Ray prints two kinds of node output in a driver: the workers' own output (the tasks' prints, which
stream here as Ray users expect) and, always, the raylets' error messages ("(raylet) Task f failed.
There are 3 retries remaining…", "A worker died or was killed…"): a crashing worker floods stderr
with lines that the raised error already sums up and names the log files of. Without the switch
those messages go to the `skyward_ray` logger at INFO instead (shown with `--verbose`, or by any
handler the program installs). Ray Client drivers never get them: the client's server prints them
on the head.
"""

from __future__ import annotations

import threading
from typing import Any

from skyward_ray.console import log, node_logs_enabled

_lock = threading.Lock()
_installed: list[bool] = []  # one element once the filter is in place


def route_raylet_messages() -> None:
    """Install (once per process) the filter in front of Ray's printer of raylet messages."""
    from ray._private import worker

    with _lock:
        if _installed:
            return
        _installed.append(True)
        original = worker.print_to_stdstream

        def print_to_stdstream(data: dict[str, Any], ignore_prefix: bool) -> None:
            if data.get("pid") == "raylet" and not node_logs_enabled():
                for line in data.get("lines", []):
                    log.info("node (raylet): %s", line)
                return
            original(data, ignore_prefix=ignore_prefix)

        worker.print_to_stdstream = print_to_stdstream
