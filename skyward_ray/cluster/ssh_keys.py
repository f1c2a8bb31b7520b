"""Per-cluster SSH keys: one client key pair, one host key pair, and a known_hosts file that pins it.

Why per cluster: a cluster lives for one `with` block, so its keys should too. The driver generates
the client key, which logs in to the head. The head's host key is pinned in a known_hosts file
*before* the first connection: either the driver generated it and delivered it to the head (startup
script), or, where the cloud lets the driver read a machine's console back (AWS), the head made it
at boot and printed its public half there (`printed_host_keys`). The tunnel can then run
with `StrictHostKeyChecking=yes` from the very first connection: no trust on first use, and a
machine-in-the-middle on the cloud's public address is refused instead of silently accepted.

Everything is plain OpenSSH (`ssh-keygen`); no key material goes through Python crypto code.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from skyward_ray.errors import ProvisioningError
from skyward_ray.node.sshd import HOST_KEYS_BEGIN, HOST_KEYS_END
from skyward_ray.planning.detached import is_pool_name

__all__ = [
    "KeyPair",
    "cluster_key_dir",
    "cluster_key_path",
    "generate_keypair",
    "known_hosts_entry",
    "printed_host_keys",
    "remove_cluster_key_dir",
    "remove_key_dir",
    "write_known_hosts",
]

# Checked with `fullmatch`: `re.match` with `$` lets a trailing newline through.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_HOST = re.compile(r"[A-Za-z0-9.:_-]{1,253}")


@dataclass(frozen=True)
class KeyPair:
    """Paths of an ed25519 key pair and its public key line (`ssh-ed25519 AAAA... comment`)."""

    private_key: Path
    public_key: Path
    public_line: str


def default_key_root() -> Path:
    """Where cluster key directories live unless told otherwise (`$SKYWARD_KEY_DIR` overrides)."""
    configured = os.environ.get("SKYWARD_KEY_DIR")
    if configured:
        return Path(configured)
    return Path.home() / ".skyward_ray" / "keys"


def _private_dir(path: Path) -> Path:
    """Create `path` (and parents) and make it 0700: private keys must never be readable by others."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def cluster_key_path(cluster_name: str, root: Path | None = None) -> Path:
    """Where one cluster's keys, known_hosts and token file live (nothing is made here)."""
    if not _SAFE_NAME.fullmatch(cluster_name):
        raise ValueError(f"cluster name {cluster_name!r} is not usable as a directory name")
    return (root if root is not None else default_key_root()) / cluster_name


def cluster_key_dir(cluster_name: str, root: Path | None = None) -> Path:
    """The 0700 directory holding one cluster's keys and known_hosts file (created if missing)."""
    path = cluster_key_path(cluster_name, root)
    _private_dir(path.parent)
    return _private_dir(path)


def generate_keypair(directory: Path, name: str = "id_ed25519", comment: str = "skyward") -> KeyPair:
    """Generate an ed25519 key pair as `directory/name` and `directory/name.pub` with ssh-keygen.

    The directory is made 0700 and the private key 0600 (ssh refuses a private key others can read).
    An existing pair of that name is replaced: keys are per cluster and never reused.
    """
    if not _SAFE_NAME.fullmatch(name):
        raise ValueError(f"key name {name!r} is not usable as a file name")
    if any(c in comment for c in "\r\n\0"):
        raise ValueError("key comment must be a single line")
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise ProvisioningError("ssh-keygen was not found on PATH; install OpenSSH's client tools")
    directory = _private_dir(Path(directory))
    private = directory / name
    public = directory / f"{name}.pub"
    for stale in (private, public):
        stale.unlink(missing_ok=True)
    done = subprocess.run(
        [keygen, "-t", "ed25519", "-N", "", "-q", "-f", str(private), "-C", comment],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
    )
    if done.returncode != 0:
        raise ProvisioningError(
            f"ssh-keygen could not create {private} (exit {done.returncode}): {done.stderr.strip()[-500:]}"
        )
    private.chmod(0o600)
    public.chmod(0o644)
    return KeyPair(private, public, public.read_text().strip())


def known_hosts_entry(host: str, port: int, public_line: str) -> str:
    """One known_hosts line pinning `public_line` (a `.pub` line) for `host` at `port`.

    OpenSSH looks a host up as bare `host` on port 22 and as `[host]:port` otherwise, so the entry
    uses the form ssh will actually search for.
    """
    if not _HOST.fullmatch(host):
        raise ValueError(f"host {host!r} is not an address or host name")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range")
    fields = public_line.split()
    if len(fields) < 2 or not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise ValueError(f"not an OpenSSH public key line: {public_line[:40]!r}")
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {fields[0]} {fields[1]}"


def printed_host_keys(console: str, key_type: str = "ssh-ed25519") -> set[str]:
    """The `key_type` host public keys (`type base64`) a machine printed on its console between
    cloud-init's markers (`skyward_ray.node.sshd.print_host_key_lines`). More than one distinct key
    means someone printed another: the caller must refuse, not choose."""
    keys, inside = set(), False
    for line in console.splitlines():
        line = line.strip()
        if line == HOST_KEYS_BEGIN:
            inside = True
        elif line == HOST_KEYS_END:
            inside = False
        elif inside and line.startswith(key_type + " "):
            fields = line.split()
            if len(fields) >= 2 and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", fields[1]):
                keys.add(f"{fields[0]} {fields[1]}")
    return keys


def write_known_hosts(path: Path, host: str, port: int, public_line: str) -> Path:
    """Write a known_hosts file that trusts exactly one host key for `host:port` (replacing the file).

    Give ssh this file with `UserKnownHostsFile=<path>`, `GlobalKnownHostsFile=/dev/null` and
    `StrictHostKeyChecking=yes`: then only the key generated for this cluster is accepted.
    """
    path = Path(path)
    _private_dir(path.parent)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(known_hosts_entry(host, port, public_line) + "\n")
    temporary.chmod(0o600)
    temporary.replace(path)  # atomic: a tunnel starting now reads the old or the new file, never half
    return path


def remove_key_dir(directory: Path) -> None:
    """Remove a cluster's key directory and everything in it (missing is fine: teardown is idempotent)."""
    shutil.rmtree(Path(directory), ignore_errors=True)


def remove_cluster_key_dir(cluster_name: str, root: Path | None = None) -> Path | None:
    """Remove the key directory of the pool `cluster_name` under `root`, where `skyward-ray gc`/`down`
    remove keys. Returns the path removed, or None when it was refused (or not there).

    The name may come from a cloud's listing (a tag anyone in the account can set), so it is not
    trusted: it must be a pool name (`is_pool_name`), the directory must not be a symlink, and it
    must resolve (symlinks followed) to a direct child of the resolved root. Anything else is left.
    """
    if not is_pool_name(cluster_name):
        return None
    base = Path(root if root is not None else default_key_root()).resolve()
    directory = base / cluster_name
    if directory.is_symlink() or not directory.is_dir() or directory.resolve().parent != base:
        return None
    shutil.rmtree(directory, ignore_errors=True)
    return directory
