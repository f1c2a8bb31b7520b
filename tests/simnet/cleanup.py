"""Removing a simulated network, and finding what of it is left, by its unique name prefix.

Everything a network makes is named `sn<5 hex>...` (namespaces `<prefix>-*`, root links
`<prefix>br` and `<prefix>p<N>`) and its files live in `/tmp/<prefix>`, so a network is removed
from what the machine has, not only from what one Python object remembers: a setup that failed
halfway, or a test process that died without closing its network, is cleaned too.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tests.simnet.processes import NamespacePins, end_pids, processes_in_netns, start_time
from tests.simnet.system import IP, SimNetError, run_command

# `ip netns exec NS` binds /etc/netns/NS/<entry> over /etc/<entry>: a simulated machine's own /etc
# files (a pod's hosts, an instance's /etc/ssh with its host private key) live there, on this machine.
NETNS_ETC = Path("/etc/netns")


def _prefixed_etc(prefix: str) -> list[Path]:
    return sorted(NETNS_ETC.glob(f"{prefix}-*")) if NETNS_ETC.is_dir() else []


def _prefixed_namespaces(prefix: str) -> list[str]:
    done = run_command([IP, "netns", "list"], check=False)
    names = [line.split()[0] for line in done.stdout.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix + "-")]


def _prefixed_links(prefix: str) -> list[str]:
    done = run_command([IP, "-o", "link", "show"], check=False)
    names = []
    for line in done.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            name = parts[1].strip().split("@", 1)[0]
            if name.startswith(prefix):
                names.append(name)
    return names


def cleanup_prefix(prefix: str, pinned: set[int] | None = None) -> None:
    """Remove everything named with `prefix`: end processes in its namespaces by pid, delete them,
    delete its root-namespace links. Touches nothing else on the machine.

    `pinned`: inodes of this network's namespaces that the caller holds (`NamespacePins`), so that
    one whose name is already gone is still searched. Every namespace found by name is pinned here
    until the last check, so that no other network's new namespace, which may get a deleted one's
    inode number, is taken for one of ours.
    """
    if not re.match(r"^sn[0-9a-f]{5}$", prefix):
        raise ValueError(f"not a simnet prefix: {prefix!r}")
    with NamespacePins() as named:
        namespaces = _prefixed_namespaces(prefix)
        for ns in namespaces:
            named.pin(ns)
        inodes = set(pinned or ()) | named.inodes()
        if inodes:
            end_pids(lambda: processes_in_netns(inodes), grace=1.0)
        for ns in namespaces:
            run_command([IP, "netns", "delete", ns], check=False)
        for etc in _prefixed_etc(prefix):
            shutil.rmtree(etc, ignore_errors=True)
        for link in _prefixed_links(prefix):
            run_command([IP, "link", "delete", link], check=False)
        problems = leftovers_of(prefix, inodes, None)
    if problems:
        raise SimNetError(f"simnet {prefix} left: {problems}")


def cleanup_orphans() -> list[str]:
    """Clean networks left by test processes that died without closing them (SIGKILL, power cut).

    A network is an orphan when its working directory `/tmp/<prefix>` is gone, or the process named
    in its `owner` file (pid and start time) no longer exists. A network being set up or used by a
    live process is never touched. Returns the prefixes cleaned.
    """
    prefixes = set()
    for line in run_command([IP, "netns", "list"], check=False).stdout.splitlines():
        match = re.match(r"^(sn[0-9a-f]{5})-", line)
        if match:
            prefixes.add(match.group(1))
    for line in run_command([IP, "-o", "link", "show"], check=False).stdout.splitlines():
        match = re.match(r"^\d+: (sn[0-9a-f]{5})(br|p\d+)[@:]", line)
        if match:
            prefixes.add(match.group(1))
    cleaned = []
    for prefix in sorted(prefixes):
        owner = Path("/tmp") / prefix / "owner"
        if owner.parent.exists():
            try:
                pid, started = owner.read_text().split()
            except (OSError, ValueError):
                continue  # being created right now: its owner file is written first thing
            if start_time(int(pid)) == started:
                continue  # its owner is alive
        try:
            cleanup_prefix(prefix)
        except SimNetError:
            continue
        shutil.rmtree(owner.parent, ignore_errors=True)
        cleaned.append(prefix)
    return cleaned


def leftovers_of(prefix: str, inodes: set[int], directory: Path | None) -> list[str]:
    """What of network `prefix` still exists: namespaces, root links, processes in its namespaces
    (`inodes`, which the caller keeps pinned), and with `directory`, processes running from it and
    the directory itself."""
    found = [f"namespace {n}" for n in _prefixed_namespaces(prefix)]
    found += [f"link {n}" for n in _prefixed_links(prefix)]
    found += [f"directory {e}" for e in _prefixed_etc(prefix)]
    found += [f"process {p} in a {prefix} namespace" for p in processes_in_netns(set(inodes))]
    if directory is not None:
        marker = str(directory) + "/"
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if marker in cmdline:
                    found.append(f"process {entry}: {cmdline[:100]}")
        if directory.exists():
            found.append(f"directory {directory}")
    return found
