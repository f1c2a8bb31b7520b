"""A cluster's Ray token in a private file, for clusters whose config is written to disk (`ray up`).

Why: `ray up` writes the config its node provider's `bootstrap_config` returns to a cache file,
`/tmp/ray-config-<hash>`, readable by every user of the machine. A token in that config would be a
token for anyone on the machine. So a cluster config never holds a token it did not come with:
it names a 0600 file in the cluster's 0700 key directory (`provider: {auth_token_file: PATH}`),
`bootstrap_config` makes the file with a fresh token when it is missing, and the node provider
reads it when it is made. A config that carries a token (skyward's own launcher keeps its config
in memory) is used as it is.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from skyward_ray.cluster import ssh_keys
from skyward_ray.errors import SpecError

#: the key of the `provider:` section that names the token file
PROVIDER_KEY = "auth_token_file"
FILE_NAME = "ray_token"


def default_path(cluster_name: str, key_root: str | None = None) -> Path:
    """`<key root>/<cluster>/ray_token`, beside the cluster's SSH keys (nothing is made here)."""
    try:
        directory = ssh_keys.cluster_key_path(cluster_name, Path(key_root).expanduser() if key_root else None)
    except ValueError as error:
        raise SpecError(f"{error}. Fix: letters, digits, '.', '_', '-'") from None
    return directory / FILE_NAME


def ensure(path: str | Path) -> str:
    """The token in `path`; a fresh 256-bit one written there first (0600, in a 0700 directory,
    never over an existing file) if missing."""
    path = Path(path).expanduser()
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        try:
            write_new(path, secrets.token_hex(32))
        except FileExistsError:
            pass  # another process made it first: theirs is the cluster's
    return read(path)


def write_new(path: Path, token: str) -> None:
    """Write `token` to a new file at `path`, 0600: never through a link, never over an existing file
    (`FileExistsError`)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(token + "\n")


def read(path: str | Path) -> str:
    """The token in `path`, which must be a regular file of this user that nobody else can read."""
    path = Path(path).expanduser()
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise SpecError(f"the cluster's Ray token file {path} cannot be read ({error.strerror}). Fix: run `ray up` "
                        "with the config again where it was brought up, or remove provider.auth_token_file") from None
    with os.fdopen(descriptor) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise SpecError(f"the cluster's Ray token file {path} must be a regular file of this user with mode "
                            f"0600 (it is {stat.filemode(info.st_mode)}). Fix: chmod 600 {path}")
        token = handle.read().strip()
    if not token:
        raise SpecError(f"the cluster's Ray token file {path} is empty. Fix: remove it; `ray up` makes a new one")
    return token


def token_for(provider_section: dict[str, Any]) -> str:
    """The token a `provider:` section names by file; "" when it names none or the file is gone (the
    cluster was torn down: `ray down` must still be able to end what is left, and a node booted
    without a token refuses to start Ray)."""
    path = provider_section.get(PROVIDER_KEY)
    if not path or not Path(path).expanduser().exists():
        return ""
    return read(path)


def remove(provider_section: dict[str, Any]) -> None:
    """Remove the token file a `provider:` section names (the cluster is gone; missing is fine)."""
    path = provider_section.get(PROVIDER_KEY)
    if path:
        path = Path(path).expanduser()
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # its directory, if nothing else (SSH keys) is left in it
            path.parent.rmdir()


__all__ = ["FILE_NAME", "PROVIDER_KEY", "default_path", "ensure", "read", "remove", "token_for"]
