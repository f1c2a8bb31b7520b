"""`skyward-ray check` for this machine: an SSH client (the tunnel to every cloud pool), a private
runtime directory (pools keep keys and tokens there), the open-files limit (every Ray node holds
hundreds of descriptors) and the free memory the nodes' object stores take. Reads only.
"""

from __future__ import annotations

import os
import resource
import shutil
import stat
from typing import TYPE_CHECKING

from skyward_ray.cluster.pool_state import runtime_root
from skyward_ray.planning.check import Finding

if TYPE_CHECKING:
    from node_providers.local.config import Local

MIN_OPEN_FILES = 4096  # below this a few Ray nodes on one machine run out of descriptors
LOW_MEMORY = 2 * 1024**3  # a pool of a couple of nodes plus their tasks


def probe(config: "Local") -> list[Finding]:
    return [ssh_finding(), runtime_dir_finding(), open_files_finding(), memory_finding(config)]


def ssh_finding() -> Finding:
    """A local pool needs no SSH; every other provider's pool is driven through an SSH tunnel."""
    path = shutil.which("ssh")
    if path is None:
        return Finding.warn("ssh", "no `ssh` client on PATH: only local pools can run",
                            "install OpenSSH's client (apt install openssh-client, brew install openssh)")
    return Finding.ok("ssh", path)


def runtime_dir_finding() -> Finding:
    """The runtime directory exists, is this user's and is 0700 (skyward makes it so, or refuses)."""
    try:
        path = runtime_root()
    except (OSError, PermissionError) as error:
        return Finding.fail("runtime dir", str(error), "set SKYWARD_RUNTIME_DIR to a directory of your own")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        return Finding.fail("runtime dir", f"{path} is {mode:04o}, readable by others", f"chmod 700 {path}")
    return Finding.ok("runtime dir", f"{path} ({mode:04o})")


def open_files_finding() -> Finding:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < MIN_OPEN_FILES:
        return Finding.warn("ulimit -n", f"{soft} open files (hard limit {hard}): Ray nodes may run out",
                            f"`ulimit -n {min(65536, hard) if hard != resource.RLIM_INFINITY else 65536}` "
                            "before starting Python")
    return Finding.ok("ulimit -n", str(soft if soft != resource.RLIM_INFINITY else "unlimited"))


def available_memory() -> int | None:
    """Bytes of memory available now (Linux MemAvailable; elsewhere free pages), None if unknown."""
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def memory_finding(config: "Local") -> Finding:
    free = available_memory()
    if free is None:
        return Finding.warn("memory", "could not read the free memory")
    gib = free / 1024**3
    if free < 2 * config.object_store_memory:
        return Finding.fail("memory", f"{gib:.1f} GiB free: not enough for two nodes' object stores "
                                      f"({config.object_store_memory // 1024**2} MiB each)",
                            "close memory-hungry programs, or pass sky.Local(object_store_memory=...) smaller")
    if free < LOW_MEMORY:
        return Finding.warn("memory", f"{gib:.1f} GiB free: a pool of one or two small nodes at most")
    return Finding.ok("memory", f"{gib:.1f} GiB free for nodes and their object stores")
