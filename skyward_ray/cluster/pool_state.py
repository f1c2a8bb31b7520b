"""Where a pool's private files live, and how `skyward-ray gc` knows whether a pool's driver lives.

**The runtime root** (`runtime_root()`): one directory per user, 0700 and owned by that user,
holding what may vanish with the login session: every local pool's machines, sockets, logs. In order:
`$SKYWARD_RUNTIME_DIR` (tests and unusual set-ups), `$XDG_RUNTIME_DIR/sky` (the user's own
runtime dir, on systemd machines), else `/tmp/sky-<uid>`. It is short on purpose: Ray puts unix
sockets below a local node's temp dir, and a socket path holds at most 107 bytes. A root that
exists but is not a private directory of this user (a symlink, someone else's, group- or
world-accessible) is refused, never used.

**The state root** (`state_root()`): one persistent directory per user, 0700, for what must
outlive a login session: `$SKYWARD_RUNTIME_DIR` when set (then both roots are that one directory),
else `$XDG_STATE_HOME/skyward`, else `~/.local/state/skyward`. Pool state files live there, not
in the runtime root: systemd wipes `$XDG_RUNTIME_DIR` at logout, and a keeper outliving the
login would lose its record (its pool then looks unowned, and a second pool could take its name).

**The pool state file** (`<state root>/pools/<name>.json`, 0600): written by the launcher before the
first machine of a pool is asked for, removed once teardown has confirmed that nothing is left.
It records the provider config, the offer and its price, and **who keeps the pool alive**: the
owner process's host, pid and start time (`Owner`). A pool's driver is *live* when that process
still runs on this host with the same start time (pids are reused; the start time tells them
apart). A driver on another host cannot be checked from here: `gc` leaves such pools alone.
A detached pool (`skyward-ray up`), kept alive by its keeper process, has the same file with
`kind="keeper"`, the keeper's identity as owner, and a `detached` section (its clocks, where it
listens, its token, how far it got): `gc` treats both the same way, and `status`, `down`,
`skyward-ray env` and `sky.attach` read the section. The token is why the file is 0600 in the
0700 state root; no cloud credential is ever in it (`ProviderConfig.without_secrets`).

The same owner identity is put on every machine as the tag `skyward/owner`
(`owner_tags`), so a pool whose state file was lost (a reboot clears the runtime dir) is still
judged by the cloud's own listing.

A pool's name is a file name here, so it must satisfy the one pool-name rule
(`skyward_ray.planning.detached.is_pool_name`); a record whose name does not is never read.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import psutil

from skyward_ray import names
from skyward_ray.planning.detached import is_pool_name

ENV_RUNTIME_DIR = names.ENV_RUNTIME_DIR
OWNER_TAG, STARTED_TAG, PRICE_TAG = names.OWNER, names.STARTED, names.PRICE


def _private_dir(path: Path) -> Path:
    """Create `path` 0700, or check an existing one is a private directory of this user."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory of this user; skyward_ray will not keep secrets there")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def runtime_root() -> Path:
    """This user's private runtime directory for skyward_ray (see the module docstring)."""
    configured = os.environ.get(ENV_RUNTIME_DIR)
    if configured:
        return _private_dir(Path(configured))
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and len(xdg) <= 16 and os.path.isdir(xdg):
        with contextlib.suppress(OSError):
            return _private_dir(Path(xdg) / "sky")
    return _private_dir(Path("/tmp") / f"sky-{os.getuid()}")


def state_root() -> Path:
    """This user's persistent private directory for skyward_ray (see the module docstring)."""
    configured = os.environ.get(ENV_RUNTIME_DIR)
    if configured:
        return _private_dir(Path(configured))
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "state"  # XDG: relative = unset
    base.mkdir(parents=True, exist_ok=True)
    return _private_dir(base / "skyward")


def new_pool_dir() -> Path:
    """A fresh private (mkdtemp, 0700) directory for one local pool's machines."""
    return Path(tempfile.mkdtemp(prefix="", dir=runtime_root()))


def records_dir() -> Path:
    """Where pool state files live: in the persistent state root, never the runtime root."""
    return _private_dir(state_root() / "pools")


@dataclass(frozen=True)
class Owner:
    """The process that keeps a pool alive (its driver, or later a keeper)."""

    host: str
    pid: int
    create_time: float

    @classmethod
    def current(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), psutil.Process().create_time())

    def as_tag(self) -> str:
        return f"{self.host}/{self.pid}/{self.create_time:.2f}"

    @classmethod
    def from_tag(cls, value: str | None) -> "Owner | None":
        try:
            host, pid, created = (value or "").rsplit("/", 2)
            return cls(host, int(pid), float(created))
        except ValueError:
            return None

    def alive(self) -> bool | None:
        """True/False on this host; None when the owner is on another host (cannot be checked here)."""
        if self.host != socket.gethostname():
            return None
        try:
            proc = psutil.Process(self.pid)
            return abs(proc.create_time() - self.create_time) < 0.05 and proc.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False


def owner_tags(price_per_node: float | None = None) -> dict[str, str]:
    """Tags every machine of a pool carries: who keeps it alive, since when, at what price per node."""
    tags = {OWNER_TAG: Owner.current().as_tag(), STARTED_TAG: str(int(time.time()))}
    if price_per_node is not None:
        tags[PRICE_TAG] = f"{price_per_node:.4f}"
    return tags


@dataclass
class PoolRecord:
    """One pool's state file."""

    name: str
    provider: str
    provider_config: dict[str, Any]
    owner: Owner
    region: str | None = None
    offer: str | None = None
    price_per_node: float = 0.0
    nodes: int = 1
    started_at: float = field(default_factory=time.time)
    kind: Literal["driver", "keeper"] = "driver"
    detached: dict[str, Any] | None = None  # a keeper's state (`skyward_ray.api.detached`); None for a driver's pool

    @property
    def hourly_cost(self) -> float:
        return self.price_per_node * self.nodes

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PoolRecord":
        data = dict(data)
        data["owner"] = Owner(**data["owner"])
        return cls(**data)


def record_path(name: str) -> Path:
    if not is_pool_name(name):
        raise ValueError(f"pool name {name!r} is not usable as a file name")
    return records_dir() / f"{name}.json"


def write_record(record: PoolRecord) -> Path:
    """Write the state file atomically, 0600 from its creation (never readable by others, not even briefly)."""
    path = record_path(record.name)
    temporary = path.with_name(f".{record.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(record), out, indent=1)
    os.replace(temporary, path)
    return path


def remove_record(name: str) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError):
        record_path(name).unlink()


def read_record(name: str) -> PoolRecord | None:
    """One pool's state file, or None when there is none (or it cannot be read)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        return PoolRecord.from_json(json.loads(record_path(name).read_text()))
    return None


def update_detached(name: str, **changes: Any) -> PoolRecord | None:
    """Merge `changes` into a keeper's `detached` section (only the keeper writes it after launch)."""
    record = read_record(name)
    if record is None:
        return None
    record.detached = {**(record.detached or {}), **changes}
    write_record(record)
    return record


def read_records() -> dict[str, PoolRecord]:
    """Every pool state file of this user (unreadable ones are skipped)."""
    found = {}
    for path in sorted(records_dir().glob("*.json")):
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            record = PoolRecord.from_json(json.loads(path.read_text()))
            if is_pool_name(record.name) and path.name == f"{record.name}.json":
                found[record.name] = record
    return found


__all__ = ["ENV_RUNTIME_DIR", "OWNER_TAG", "Owner", "PoolRecord", "new_pool_dir", "owner_tags", "read_record",
           "read_records", "record_path", "records_dir", "remove_record", "runtime_root", "state_root",
           "update_detached", "write_record"]
