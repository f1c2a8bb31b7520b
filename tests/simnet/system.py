"""The machine's side of the simulator: where its tools are, running them, and whether it can simulate.

Every namespace, link and firewall operation of `tests.simnet` runs one of these tools through
`run_command`, so a failure always says which command failed and what it printed.
"""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence

IP = shutil.which("ip") or "/usr/sbin/ip"
SETSID = shutil.which("setsid") or "/usr/bin/setsid"
SSHD = "/usr/sbin/sshd"  # sshd must be started by absolute path (it re-executes itself)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
APT_LINE = "apt-get install -y iproute2 nftables openssh-server openssh-client util-linux"


class SimNetError(RuntimeError):
    """A simulated network operation failed; the message has the command and its stderr."""


def run_command(argv: Sequence[str], *, input: str | None = None, check: bool = True,
                timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run a tool (ip, nft, ...) and capture its output; with `check`, raise `SimNetError` when it fails."""
    done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout,
                          stdin=None if input is not None else subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise SimNetError(f"`{' '.join(argv)}` failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    return done


def _which_sbin(name: str) -> str | None:
    return shutil.which(name, path=SYSTEM_PATH)


@functools.lru_cache(maxsize=1)
def check_available() -> str | None:
    """One line saying why this machine cannot run simulated hosts, or None when it can.

    Needs root, iproute2, nft, setsid, OpenSSH's sshd, ssh and ssh-keygen, and a kernel that lets us
    create network namespaces, veth pairs and nftables rules in them (probed for real, then removed).
    """
    if os.geteuid() != 0:
        return f"simnet needs root to create network namespaces (running as uid {os.geteuid()})"
    missing = [name for name in ("ip", "nft", "setsid", "ssh", "ssh-keygen") if _which_sbin(name) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append("sshd")
    if missing:
        return f"simnet needs {', '.join(missing)} on this machine: {APT_LINE}"
    probe = f"snprobe{secrets.token_hex(3)}"
    try:
        run_command([IP, "netns", "add", probe])
        try:
            run_command([IP, "-n", probe, "link", "add", "probe0", "type", "veth", "peer", "name", "probe1"])
            run_command([IP, "netns", "exec", probe, "nft", "-f", "-"],
                        input="table inet probe {\n chain input {\n  type filter hook input priority 0; policy accept;\n }\n}\n")
        finally:
            run_command([IP, "netns", "delete", probe], check=False)
    except (SimNetError, OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot create network namespaces, veth pairs or nftables rules here: {str(exc).splitlines()[0]}"
    return None
