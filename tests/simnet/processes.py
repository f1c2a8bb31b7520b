"""Finding and ending the processes of a network namespace, by pid (never by name).

A namespace's processes are found through /proc (each process's `ns/net` link), which still works
after `ip netns delete` has removed the namespace's name, so nothing started in a host can escape
the teardown.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tests.simnet.system import SimNetError


class NamespacePins:
    """Open handles on named network namespaces: each keeps its namespace, and so its inode number, alive.

    Why: a namespace's processes are told apart from everyone else's only by its inode number (what
    /proc/PID/ns/net points at), and the kernel hands a destroyed namespace's number to the very
    next namespace created on the machine, by any process (another test worker's network). So a
    check by inode is sound only while the namespace is pinned. Released with no process and no
    name left, a namespace is destroyed, and nothing can enter it again.
    """

    def __init__(self) -> None:
        self._held: dict[str, tuple[int, int]] = {}  # namespace name → (inode, open fd)

    def pin(self, name: str) -> int | None:
        """Hold namespace `name` from now on; its inode, or None when no namespace has that name."""
        if name in self._held:
            return self._held[name][0]
        try:
            fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        inode = os.fstat(fd).st_ino
        self._held[name] = (inode, fd)
        return inode

    def inodes(self) -> set[int]:
        return {inode for inode, _ in self._held.values()}

    def release(self) -> None:
        """Let the namespaces go (each is destroyed once no process and no name holds it). Idempotent."""
        held, self._held = self._held, {}
        for _, fd in held.values():
            os.close(fd)

    def __enter__(self) -> NamespacePins:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def processes_in_netns(inodes: set[int]) -> list[int]:
    """Pids of live processes whose network namespace is one of `inodes` (works after `netns delete`;
    sound only while those namespaces are pinned: `NamespacePins`)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry}/ns/net")  # "net:[4026532345]"; unreadable for zombies
        except OSError:
            continue
        if int(link[5:-1]) in inodes:
            found.append(int(entry))
    return found


def _signal_all(pids: Sequence[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def end_pids(list_pids: Callable[[], list[int]], grace: float = 3.0, timeout: float = 15.0) -> None:
    """End every pid `list_pids()` returns: SIGTERM, then SIGKILL after `grace`, until none is left.

    Asked again each round, because dying daemons (Ray's) may still start helpers meanwhile.
    """
    deadline = time.monotonic() + timeout
    pids = list_pids()
    if not pids:
        return
    _signal_all(pids, signal.SIGTERM)
    kill_at = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = list_pids()
        if pids and time.monotonic() >= kill_at:
            _signal_all(pids, signal.SIGKILL)
    if pids:
        raise SimNetError(f"processes {pids} did not end within {timeout:.0f} s")


def start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot (field 22 of /proc/PID/stat): pid + this is unique."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def log_tail(log_path: str | Path | None, lines: int = 20) -> str:
    """The last `lines` of a process's log, as a suffix for an error message ("" when there is none)."""
    if log_path is None:
        return ""
    try:
        text = Path(log_path).read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "; log tail:\n" + "\n".join(text)
