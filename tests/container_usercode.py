"""A user's module for the Container tests: functions, a helper and an exception type of its own.

It is shipped to the nodes as user code (the nodes have none of the driver's files), so it imports
only what a node has: skyward_ray, the standard library and the Image's packages.
"""

from __future__ import annotations

import socket
import sys

import skyward_ray as sky

class Refused(Exception):
    """A user's own exception type: it must reach the driver as itself."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason, code)
        self.code = code


@sky.function
def where() -> dict:
    import os

    info = sky.instance_info()
    return {"node": info.node, "instance_id": info.instance_id, "ip": info.ip, "host": socket.gethostname(),
            "drivers_python": os.path.exists(DRIVERS_PYTHON)}


DRIVERS_PYTHON = sys.executable  # the driver's interpreter: absent on a node


@sky.function
def table(rows: list[list[int]]) -> str:
    import tabulate  # the Image's package, in the node image

    return tabulate.tabulate(rows, tablefmt="plain")


@sky.function
def refuse(code: int) -> None:
    raise Refused("the user's own error", code)


@sky.function
def read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


@sky.function
def square(x: int) -> int:
    return x * x
